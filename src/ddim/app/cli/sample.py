"""``ddim sample``: generate samples (default: 64 digits from the embedded model, 50 DDIM steps, eta 0)

Generate samples with DDIM and write an upscaled PNG grid.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from ddim.app.cli import common
from ddim.app.cli.sharded import add_sharded_options, run_sharded
from ddim.app.seeding import row_generators
from ddim.sampling import sample
from ddim.scheduler import DDIMScheduler


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = common.add_command(subparsers, __doc__, run)
    parser.add_argument(
        "-n", "--num-samples", type=common.positive_int, default=64, help="number of samples (default: 64)"
    )
    common.add_sampling_options(parser)
    common.add_model_options(parser)
    parser.add_argument(
        "-o", "--output", type=Path, default=Path("samples.png"), help="PNG grid (default: samples.png)"
    )
    parser.add_argument(
        "--scale", type=common.positive_int, default=None, help="pixel upscaling (default: 48 / height)"
    )
    add_sharded_options(parser)


def generate_samples(
    loaded: common.LoadedModel,
    scheduler: DDIMScheduler,
    count: int,
    *,
    steps: int,
    eta: float,
    seed: int,
    batch_size: int,
    device: str,
    progress: bool,
    start: int = 0,
) -> torch.Tensor:
    """Samples ``start .. start + count - 1`` of ``seed``: sample i's x_T and noise depend on seed and i only.

    The model's rounding can depend on the batch size (CPU conv/linear kernels), so the bits of a
    sample may change with ``batch_size``; ``--out-dir`` runs fixed micro-batches for bit-identity.
    """
    batches = []
    for first in range(start, start + count, batch_size):
        size = min(batch_size, start + count - first)
        batches.append(
            sample(
                loaded.model,
                scheduler,
                (size, *loaded.sample_shape),
                num_inference_steps=steps,
                eta=eta,
                generator=row_generators(seed, first, size),
                device=device,
                progress=progress,
            ).cpu()
        )
    return torch.cat(batches)


def run(args: argparse.Namespace) -> int:
    common.check_device(args.device)
    if args.out_dir is not None:
        return run_sharded(args)
    common.check_output_path(args.output)
    with common.timed() as elapsed:
        loaded = common.load_model(args.model, args.device)
        scheduler = common.configure_spacing(loaded.scheduler, args.spacing)
        common.check_steps(args.steps, scheduler)
        scale = args.scale or max(1, 48 // loaded.sample_shape[-2])
        columns = math.ceil(math.sqrt(args.num_samples))
        lower = "--scale or -n (--out-dir writes any number of samples)"
        common.check_grid_size(args.num_samples, columns, loaded.sample_shape, scale, lower)
        samples = generate_samples(
            loaded,
            scheduler,
            args.num_samples,
            steps=args.steps,
            eta=args.eta,
            seed=args.seed,
            batch_size=args.batch_size,
            device=args.device,
            progress=args.progress,
        )
        common.check_finite(samples)
        common.save_png(args.output, common.image_grid(common.to_uint8(samples), columns, scale))
    print(
        f"wrote {args.output} ({args.num_samples} samples of the {loaded.description}, {args.steps} steps, "
        f"eta {args.eta:g}, seed {args.seed}) in {elapsed[0]:.1f} s"
    )
    return 0
