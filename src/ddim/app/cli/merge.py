"""``ddim merge``: verify the shards of `ddim sample --out-dir DIR` and merge them into one .npz

Verify a sharded run (as `ddim verify`) and write its arrays indices, seeds and samples, in index order, to
one .npz (atomically). Exit code 1 when shards are missing or corrupt or files are stray; 2 when DIR is not a
shard directory, its manifest is damaged, or --output cannot be written (nothing partial is left).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ddim.app.cli import common
from ddim.app.shards import OutputExistsError, merge_shards, verify_shards


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = common.add_command(subparsers, __doc__, run)
    parser.add_argument("out_dir", type=Path, metavar="DIR", help="the --out-dir of `ddim sample`")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the merged .npz to write")
    parser.add_argument("--force", action="store_true", help="replace --output if it exists")


def run(args: argparse.Namespace) -> int:
    common.check_output_path(args.output)  # before verifying, which reads every shard
    exists = common.UsageError(f"--output {str(args.output)!r} exists; pass --force to replace it")
    if os.path.lexists(args.output) and not args.force:
        raise exists
    report = verify_shards(args.out_dir)
    if not report.ok:
        print(report.describe(), file=sys.stderr)
        return 1
    try:
        target = merge_shards(args.out_dir, args.output, overwrite=args.force)
    except OutputExistsError:  # another merge took the file meanwhile
        raise exists from None
    print(f"wrote {target} ({report.num_samples} samples from {report.num_shards} shards)")
    return 0
