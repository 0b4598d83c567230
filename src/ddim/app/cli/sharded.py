"""The sharded mode of ``ddim sample`` (``--out-dir DIR``): resumable shards, one or many processes (torchrun)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ddim.app.cli.arguments import positive_int
from ddim.app.cli.loading import check_steps, configure_spacing, load_model
from ddim.app.cli.usage import UsageError
from ddim.app.digits.fid_statistics import DigitsFeatures
from ddim.app.shards import generate_shards, rank_device
from ddim.app.shards.conditioning import Conditioning
from ddim.app.shards.processes import die_with_parent


def add_sharded_options(parser: argparse.ArgumentParser) -> None:
    """--out-dir, --shard-size, --micro-batch, --png, --fid-stats."""
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
    group.add_argument(
        "--fid-stats",
        action="store_true",
        help="also store in each shard the digits-FID feature statistics of its samples (per digit too with "
        "--digit), for `ddim eval --from-shards DIR`",
    )


def run_sharded(args: argparse.Namespace, conditioning: Conditioning | None = None) -> int:
    """Generate ``--num-samples`` samples into ``--out-dir`` on this process's share of the shards (class-conditional
    with ``conditioning``: the conditional model, called as ``model(x, t, labels)``)."""
    if "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ:
        die_with_parent()  # first thing: a torchrun worker must not outlive its launcher, even while loading
    try:
        device = rank_device(args.device, int(os.environ.get("LOCAL_RANK", "0")))
    except RuntimeError as error:  # not a device string (ValueError, e.g. no CUDA, is reported by ddim.app.cli)
        raise UsageError(f"--device {args.device!r} cannot be used: {str(error).splitlines()[0]}") from error
    check_micro_batches(args.batch_size, args.shard_size, args.micro_batch)
    loaded = load_model(args.model, str(device), conditional=conditioning is not None)
    if args.fid_stats and loaded.sample_shape != (1, 8, 8):
        raise UsageError("--fid-stats needs a digits model (1x8x8 samples); digits-FID is defined for digits only")
    scheduler = configure_spacing(loaded.scheduler, args.spacing)
    check_steps(args.steps, scheduler)
    generate_shards(
        loaded.model,
        scheduler,
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
        log=report,
        conditioning=conditioning,
        fid_features=DigitsFeatures() if args.fid_stats else None,
    )
    return 0


def check_micro_batches(batch_size: int, shard_size: int, micro_batch: int) -> None:
    """``UsageError`` naming the flags unless --batch-size and --shard-size are multiples of --micro-batch."""
    offenders = [
        f"{flag} {value}"
        for flag, value in (("--batch-size", batch_size), ("--shard-size", shard_size))
        if value % micro_batch
    ]
    if offenders:
        raise UsageError(
            f"{' and '.join(offenders)} must be {'multiples' if len(offenders) > 1 else 'a multiple'} of --micro-batch "
            f"{micro_batch} (so that every micro-batch the model sees holds the same sample indices in every run)"
        )


def report(line: str) -> None:
    """The summary line on stdout, notes (a stale lock taken over, idle processes, stray files) on stderr."""
    print(line, file=sys.stderr if line.startswith("note:") else sys.stdout)
