"""``ddim interpolate``: decode a slerp between two seeds' x_T into a PNG strip (DDIM paper, sec. 5.3)

Spherical interpolation between the x_T of sample 0 of two seeds (the first image of `ddim sample --seed A`
and of `--seed B`), decoded with deterministic DDIM (eta 0).
"""

from __future__ import annotations

import argparse

import torch

from ddim.app import images, timing
from ddim.app.cli import arguments, devices, loading, outputs
from ddim.app.seeding import row_generators
from ddim.app.wording import counted
from ddim.interpolation import slerp
from ddim.noise import randn_like_diffusers
from ddim.sampling import sample


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = arguments.add_command(subparsers, __doc__, run)
    parser.add_argument(
        "--seeds", type=arguments.seed_int, nargs=2, default=[0, 1], metavar=("A", "B"), help="default: 0 1"
    )
    parser.add_argument(
        "--frames", type=arguments.positive_int, default=9, help="points on the path, ends included (default: 9)"
    )
    parser.add_argument("--steps", type=arguments.positive_int, default=50, help="DDIM steps (default: 50)")
    arguments.add_spacing_option(parser)
    arguments.add_model_options(parser)
    arguments.add_png_output_options(parser, "interpolation.png")


def run(args: argparse.Namespace) -> int:
    devices.check_device(args.device)
    outputs.check_png_output(args.output, args.force)
    with timing.timed() as elapsed:
        loaded = loading.load_model(args.model, args.device)
        scheduler = loading.configure_spacing(loaded.scheduler, args.spacing)
        loading.check_steps(args.steps, scheduler)
        scale = max(1, 48 // loaded.sample_shape[-2])
        outputs.check_grid_size(args.frames, args.frames, loaded.sample_shape, scale, "--frames")
        shape = (1, *loaded.sample_shape)
        ends = [randn_like_diffusers(shape, row_generators(seed, 0, 1), device=args.device) for seed in args.seeds]
        weights = torch.linspace(0, 1, args.frames, dtype=torch.float64)
        latents = slerp(ends[0], ends[1], weights).reshape(args.frames, *loaded.sample_shape)
        frames = sample(
            loaded.model,
            scheduler,
            noise=latents,
            num_inference_steps=args.steps,
            progress=args.progress,
        )
        outputs.check_finite(frames, "frames")
        outputs.save_png(args.output, images.image_grid(images.to_uint8(frames.cpu()), args.frames, scale))
    print(
        f"wrote {args.output} ({counted(args.frames, 'frame')} from seed {args.seeds[0]} to seed {args.seeds[1]}) "
        f"in {elapsed[0]:.1f} s"
    )
    return 0
