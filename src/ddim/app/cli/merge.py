"""``ddim merge``: verify the shards of `ddim sample --out-dir DIR` and merge them into one .npz

Verify a sharded run (as `ddim verify`) and write all its samples, in index order (atomically): --format npz
(default) the arrays indices, seeds, samples (float32 NCHW) and labels; adm an .npz with arr_0 uint8 NHWC and
arr_1 labels (ADM's evaluator, DiT); png-folder a new folder of 000000.png ... and labels.csv. Exit code 1
when shards are missing or corrupt or files are stray; 2 when DIR is not a shard directory, its manifest is
damaged, or --output cannot be written (nothing partial is left).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ddim.app.cli import arguments, outputs
from ddim.app.shards import OutputExistsError, verify_shards
from ddim.app.shards.export import EXPORT_FORMATS, export_samples
from ddim.app.wording import counted


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = arguments.add_command(subparsers, __doc__, run)
    parser.add_argument("out_dir", type=Path, metavar="DIR", help="the --out-dir of `ddim sample`")
    parser.add_argument(
        "-o", "--output", type=Path, required=True, help="the merged .npz to write (png-folder: the new folder)"
    )
    parser.add_argument(
        "--format",
        choices=EXPORT_FORMATS,
        default="npz",
        help="npz: float32 samples with indices, seeds, labels; adm: uint8 NHWC arr_0 and labels arr_1; "
        "png-folder: one PNG per sample (default: npz)",
    )
    arguments.add_force_option(parser)


def run(args: argparse.Namespace) -> int:
    if args.format == "png-folder" and args.output.is_dir():  # before verifying, which reads every shard
        if not args.force:
            raise outputs.output_exists(args.output)
    else:
        outputs.check_new_output(args.output, args.force)
    report = verify_shards(args.out_dir)
    if not report.ok:
        print(report.describe(), file=sys.stderr)
        return 1
    try:
        target = export_samples(args.out_dir, args.output, args.format, overwrite=args.force)
    except OutputExistsError:  # another merge took the output meanwhile
        raise outputs.output_exists(args.output) from None
    print(f"wrote {target} ({counted(report.num_samples, 'sample')} from {counted(report.num_shards, 'shard')})")
    return 0
