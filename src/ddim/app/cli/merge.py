"""``ddim merge``: verify the shards of `ddim sample --out-dir DIR` and merge them into one .npz

Verify a sharded run (as `ddim verify`) and write its arrays indices, seeds and samples, in index order, to
one .npz (atomically). Exit code 1 when shards are missing or corrupt or files are stray; 2 when DIR is not a
shard directory, its manifest is damaged, or --output cannot be written (nothing partial is left).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ddim.app.cli import arguments, outputs
from ddim.app.shards import OutputExistsError, merge_shards, verify_shards
from ddim.app.wording import counted


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = arguments.add_command(subparsers, __doc__, run)
    parser.add_argument("out_dir", type=Path, metavar="DIR", help="the --out-dir of `ddim sample`")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the merged .npz to write")
    arguments.add_force_option(parser)


def run(args: argparse.Namespace) -> int:
    outputs.check_new_output(args.output, args.force)  # before verifying, which reads every shard
    report = verify_shards(args.out_dir)
    if not report.ok:
        print(report.describe(), file=sys.stderr)
        return 1
    try:
        target = merge_shards(args.out_dir, args.output, overwrite=args.force)
    except OutputExistsError:  # another merge took the file meanwhile
        raise outputs.output_exists(args.output) from None
    print(f"wrote {target} ({counted(report.num_samples, 'sample')} from {counted(report.num_shards, 'shard')})")
    return 0
