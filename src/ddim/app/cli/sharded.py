"""The sharded mode of ``ddim sample`` (``--out-dir DIR``): resumable shards, one or many processes (torchrun)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ddim.app.cli.common import UsageError, configure_spacing, load_model, positive_int
from ddim.app.shards import generate_shards, rank_device


def add_sharded_options(parser: argparse.ArgumentParser) -> None:
    """--out-dir, --shard-size, --micro-batch, --png."""
    group = parser.add_argument_group(
        "sharded output (resumable; run under `torchrun --nproc_per_node=K -m ddim sample ...` to use K processes)"
    )
    group.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="write the samples as shards with a manifest into this directory (instead of a PNG grid); "
        "rerunning the same command resumes",
    )
    group.add_argument("--shard-size", type=positive_int, default=256, help="samples per shard (default: 256)")
    group.add_argument(
        "--micro-batch",
        type=positive_int,
        default=64,
        help="rows per model call; fixes the bits of every sample whatever --batch-size and the number of "
        "processes; --batch-size and --shard-size must be multiples of it (default: 64)",
    )
    group.add_argument("--png", action="store_true", help="also write DIR/images/000123.png per sample")


def run_sharded(args: argparse.Namespace) -> int:
    """Generate ``--num-samples`` samples into ``--out-dir`` on this process's share of the shards."""
    try:
        device = rank_device(args.device, int(os.environ.get("LOCAL_RANK", "0")))
    except RuntimeError as error:  # not a device string (ValueError, e.g. no CUDA, is reported by ddim.app.cli)
        raise UsageError(f"--device {args.device!r} cannot be used: {str(error).splitlines()[0]}") from error
    loaded = load_model(args.model, str(device))
    generate_shards(
        loaded.model,
        configure_spacing(loaded.scheduler, args.spacing),
        args.out_dir,
        args.num_samples,
        loaded.sample_shape,
        seed=args.seed,
        num_inference_steps=args.steps,
        eta=args.eta,
        batch_size=args.batch_size,
        micro_batch=args.micro_batch,
        shard_size=args.shard_size,
        device=device,
        png=args.png,
        progress=args.progress,
        model_info={"description": loaded.description},
    )
    return 0
