"""``ddim merge DIR -o FILE.npz``: verify a sharded run and write all its samples, in index order, to one file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ddim.app.shards import merge_shards, verify_shards


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "merge",
        help="verify the shards of `ddim sample --out-dir DIR` and merge them into one .npz",
        description="Verify a sharded run (as `ddim verify`) and write its arrays indices, seeds and samples, "
        "in index order, to one .npz (atomically). Exit code 1 when shards are missing or corrupt.",
    )
    parser.add_argument("out_dir", type=Path, metavar="DIR", help="the --out-dir of `ddim sample`")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the merged .npz to write")
    parser.add_argument("--force", action="store_true", help="replace --output if it exists")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    report = verify_shards(args.out_dir)
    if not report.ok:
        print(report.describe(), file=sys.stderr)
        return 1
    target = merge_shards(args.out_dir, args.output, overwrite=args.force)
    print(f"wrote {target} ({report.num_samples} samples from {report.num_shards} shards)")
    return 0
