"""``ddim verify``: check the shards of `ddim sample --out-dir DIR` against their manifest

Check the manifest and every shard (present, SHA-256, indices, seeds, shape; labels of a class-conditional run
by its label rule; --fid-stats statistics recomputed from the samples) of a sharded run, and look for stray files.
Exit code 0: all shards complete; 1: missing or corrupt shards or stray files (listed); 2: not a
shard directory, or a damaged manifest.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ddim.app.cli import arguments
from ddim.app.shards import verify_shards


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = arguments.add_command(subparsers, __doc__, run)
    parser.add_argument("out_dir", type=Path, metavar="DIR", help="the --out-dir of `ddim sample`")


def run(args: argparse.Namespace) -> int:
    report = verify_shards(args.out_dir)
    print(report.describe())
    return 0 if report.ok else 1
