"""``ddim invert``: encode held-out digits to x_T and decode them back (DDIM paper, sec. 5.4)

DDIM inversion of held-out digits (eta 0): x_0 -> x_T -> x_0. Prints the reconstruction error and writes a PNG
with the originals (top row) and the reconstructions (bottom row).
"""

from __future__ import annotations

import argparse

import torch

from ddim.app import images, timing
from ddim.app.cli import arguments, devices, loading, outputs, usage
from ddim.app.digits import SAMPLE_SHAPE, TEST_SIZE, load_digits_split
from ddim.app.wording import counted
from ddim.inversion import MAX_FIXED_POINT_ITERATIONS, invert
from ddim.sampling import sample


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = arguments.add_command(subparsers, __doc__, run)
    parser.add_argument(
        "-n",
        "--num-images",
        type=lambda text: arguments.parse_int_in(text, 1, TEST_SIZE),
        default=8,
        help=f"held-out digits, 1..{TEST_SIZE} (default: 8)",
    )
    parser.add_argument(
        "--first", type=arguments.non_negative_int, default=0, help="index of the first held-out digit (default: 0)"
    )
    parser.add_argument("--steps", type=arguments.positive_int, default=50, help="DDIM steps both ways (default: 50)")
    parser.add_argument(
        "--fixed-point-iterations",
        type=lambda text: arguments.parse_int_in(text, 0, MAX_FIXED_POINT_ITERATIONS),
        default=0,
        help=f"refinements per inversion step, 0..{MAX_FIXED_POINT_ITERATIONS} (default: 0)",
    )
    arguments.add_model_options(parser)
    arguments.add_png_output_options(parser, "inversion.png")


def run(args: argparse.Namespace) -> int:
    devices.check_device(args.device)
    outputs.check_png_output(args.output, args.force)
    if args.first + args.num_images > TEST_SIZE:
        raise usage.UsageError(
            f"--first {args.first} with -n {args.num_images} runs past the {TEST_SIZE} held-out digits; "
            f"allowed --first values are 0..{TEST_SIZE - args.num_images}"
        )
    with timing.timed() as elapsed:
        loaded = loading.load_model(args.model, args.device)
        if loaded.sample_shape != SAMPLE_SHAPE:
            raise usage.UsageError("ddim invert needs a digits model (1x8x8 samples): it inverts held-out digits")
        loading.check_steps(args.steps, loaded.scheduler)
        held_out = load_digits_split().test_images
        originals = held_out[args.first : args.first + args.num_images].to(args.device)
        latents = outputs.check_finite(
            invert(
                loaded.model,
                loaded.scheduler,
                originals,
                num_inference_steps=args.steps,
                fixed_point_iterations=args.fixed_point_iterations,
                progress=args.progress,
            ),
            "inverted digits (x_T)",
        )
        decoded = sample(
            loaded.model,
            loaded.scheduler,
            noise=latents,
            num_inference_steps=args.steps,
            progress=args.progress,
        )
        outputs.check_finite(decoded, "reconstructions")
        error = (decoded - originals).float()
        rmse = float(error.pow(2).mean().sqrt())
        worst = float(error.abs().max())
        pair = torch.cat([originals, decoded]).cpu()
        outputs.save_png(args.output, images.image_grid(images.to_uint8(pair), args.num_images, scale=6))
    print(
        f"reconstruction error over {counted(args.num_images, 'held-out digit')}, {counted(args.steps, 'step')}: "
        f"RMSE {rmse:.4f}, "
        f"max |error| {worst:.4f} (pixel range [-1, 1]); x_T std {float(latents.std()):.3f}"
    )
    print(f"wrote {args.output} (top: originals, bottom: reconstructions) in {elapsed[0]:.1f} s")
    return 0
