"""``ddim verify DIR``: check the manifest and the checksum of every shard of a sharded run."""

from __future__ import annotations

import argparse
from pathlib import Path

from ddim.app.shards import verify_shards


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="check the shards of `ddim sample --out-dir DIR` against their manifest",
        description="Check the manifest and every shard (present, SHA-256, indices) of a sharded run. "
        "Exit code 0: all shards complete; 1: missing or corrupt shards (listed); 2: not a shard directory.",
    )
    parser.add_argument("out_dir", type=Path, metavar="DIR", help="the --out-dir of `ddim sample`")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    report = verify_shards(args.out_dir)
    print(report.describe())
    return 0 if report.ok else 1
