"""``ddim sample``: generate samples (default: 64 digits from the embedded model, 50 DDIM steps, eta 0)

Generate samples with DDIM and write an upscaled PNG grid. With --digit, chosen digits from the embedded
class-conditional model (v-prediction, zero terminal SNR, trailing grid) with classifier-free guidance:
-n samples per digit, one row per digit (a single digit: a square grid). With --out-dir, -n samples into
resumable shards (with --digit: the digits in turn, or 'random' for a random digit per sample).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from ddim.app.cli import common
from ddim.app.cli.sharded import add_sharded_options, run_sharded
from ddim.app.digits.conditional import (
    DEFAULT_GUIDANCE_RESCALE,
    DEFAULT_GUIDANCE_SCALE,
    NULL_LABEL,
    NUM_DIGITS,
    NUM_LABELS,
    sample_digits,
)
from ddim.app.seeding import row_generators
from ddim.app.shards.conditioning import GUIDANCE_KINDS, Conditioning
from ddim.sampling import sample
from ddim.scheduler import DDIMScheduler

#: Default -n: samples without --digit, and samples per digit with it.
DEFAULT_COUNT = 64
DEFAULT_PER_DIGIT = 16


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = common.add_command(subparsers, __doc__, run)
    parser.add_argument(
        "-n",
        "--num-samples",
        type=common.positive_int,
        default=None,
        help=f"number of samples (default: {DEFAULT_COUNT}; with --digit: per digit, default {DEFAULT_PER_DIGIT})",
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
    group = parser.add_argument_group("class-conditional sampling (the embedded conditional model, or --model one)")
    group.add_argument(
        "--digit",
        nargs="+",
        type=digit_arg,
        default=None,
        metavar="D",
        help="digits 0-9 to draw, or 'all' (0..9): one row per digit; with --out-dir sample i gets the "
        f"(i mod k)-th of the k digits, or with '{RANDOM_DIGIT}' a uniform random digit drawn from its seed",
    )
    group.add_argument(
        "--guidance-scale",
        type=common.non_negative_float,
        default=None,
        help=f"classifier-free guidance s >= 0: v = v_null + s (v_digit - v_null); 1 = none "
        f"(default: {DEFAULT_GUIDANCE_SCALE:g}; needs --digit)",
    )
    group.add_argument(
        "--guidance-rescale",
        type=lambda text: common.parse_real_in(text, 0.0, 1.0),
        default=None,
        help=f"guidance rescale phi in [0, 1] (arXiv 2305.08891; default: {DEFAULT_GUIDANCE_RESCALE:g}; needs --digit)",
    )
    group.add_argument(
        "--guidance-kind",
        choices=GUIDANCE_KINDS,
        default=None,
        help=f"guidance method (default: {GUIDANCE_KINDS[0]}: classifier-free guidance with rescale; needs --digit)",
    )


#: The --digit value that gives every sample of an --out-dir run a random digit (the "uniform" label rule).
RANDOM_DIGIT = "random"


def digit_arg(text: str) -> tuple[int, ...] | str:
    """argparse type of one --digit value: a digit 0..9, ``all`` (every digit) or ``random``."""
    if text == "all":
        return tuple(range(NUM_DIGITS))
    if text == RANDOM_DIGIT:
        return RANDOM_DIGIT
    return (common.parse_int_in(text, 0, NUM_DIGITS - 1),)


def conditional_digits(args: argparse.Namespace) -> list[int] | None:
    """The digits asked for (``None`` without --digit), after checking the options that need --digit."""
    if args.digit is None:
        for flag, value in (
            ("--guidance-scale", args.guidance_scale),
            ("--guidance-rescale", args.guidance_rescale),
            ("--guidance-kind", args.guidance_kind),
        ):
            if value is not None:
                raise common.UsageError(f"{flag} needs --digit (the unconditional model has no guidance)")
        return None
    if RANDOM_DIGIT in args.digit:
        if len(args.digit) > 1:
            raise common.UsageError(f"--digit {RANDOM_DIGIT} draws a digit per sample; give it alone")
        if args.out_dir is None:
            raise common.UsageError(f"--digit {RANDOM_DIGIT} needs --out-dir (a grid has one row per chosen digit)")
        return list(range(NUM_DIGITS))
    return [digit for values in args.digit for digit in values]


def shard_conditioning(args: argparse.Namespace, digits: list[int]) -> Conditioning:
    """The conditioning of an --out-dir run with --digit: the digits in turn, or uniform with ``random``."""
    return Conditioning(
        tuple(digits),
        "uniform" if args.digit == [RANDOM_DIGIT] else "cycle",
        NUM_LABELS,
        NULL_LABEL,
        DEFAULT_GUIDANCE_SCALE if args.guidance_scale is None else args.guidance_scale,
        DEFAULT_GUIDANCE_RESCALE if args.guidance_rescale is None else args.guidance_rescale,
        args.guidance_kind or GUIDANCE_KINDS[0],
    )


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
    labels: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    guidance_rescale: float = 0.0,
) -> torch.Tensor:
    """Samples ``start .. start + count - 1`` of ``seed``: sample i's x_T and noise depend on seed and i only.

    With ``labels`` (one digit per sample, ``count`` of them) the model is conditional, called as
    ``model(x, t, labels)``, and guided: m = m_null + s (m_digit - m_null), then rescaled by phi.
    The model's rounding can depend on the batch size (CPU conv/linear kernels), so the bits of a
    sample may change with ``batch_size``; ``--out-dir`` runs fixed micro-batches for bit-identity.
    """
    batches = []
    for first in range(start, start + count, batch_size):
        size = min(batch_size, start + count - first)
        generators = row_generators(seed, first, size)
        if labels is not None:
            batch = sample_digits(
                loaded.model,
                scheduler,
                labels[first - start : first - start + size],
                steps=steps,
                guidance_scale=guidance_scale,
                guidance_rescale=guidance_rescale,
                eta=eta,
                generator=generators,
                device=device,
                progress=progress,
            )
        else:
            batch = sample(
                loaded.model,
                scheduler,
                (size, *loaded.sample_shape),
                num_inference_steps=steps,
                eta=eta,
                generator=generators,
                device=device,
                progress=progress,
            )
        batches.append(batch.cpu())
    return torch.cat(batches)


def load_for_grid(args: argparse.Namespace, conditional: bool) -> tuple[common.LoadedModel, DDIMScheduler, int]:
    """The model of ``--model``, its scheduler with ``--spacing`` applied and ``--steps`` checked, and the PNG
    upscale factor (``--scale``, or about 48 pixels a side)."""
    loaded = common.load_model(args.model, args.device, conditional=conditional)
    scheduler = common.configure_spacing(loaded.scheduler, args.spacing)
    common.check_steps(args.steps, scheduler)
    return loaded, scheduler, args.scale or max(1, 48 // loaded.sample_shape[-2])


def run(args: argparse.Namespace) -> int:
    common.check_device(args.device)
    digits = conditional_digits(args)
    if args.out_dir is not None:
        args.num_samples = args.num_samples or DEFAULT_COUNT
        return run_sharded(args, shard_conditioning(args, digits) if digits is not None else None)
    if digits is not None:
        return run_conditional(args, digits)
    args.num_samples = args.num_samples or DEFAULT_COUNT
    common.check_output_path(args.output)
    with common.timed() as elapsed:
        loaded, scheduler, scale = load_for_grid(args, conditional=False)
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


def run_conditional(args: argparse.Namespace, digits: list[int]) -> int:
    """``--digit``: -n samples of each digit from the conditional model, one row per digit (row-major seeds)."""
    per_digit = args.num_samples or DEFAULT_PER_DIGIT
    count = per_digit * len(digits)
    scale_s = DEFAULT_GUIDANCE_SCALE if args.guidance_scale is None else args.guidance_scale
    rescale = DEFAULT_GUIDANCE_RESCALE if args.guidance_rescale is None else args.guidance_rescale
    common.check_output_path(args.output)
    with common.timed() as elapsed:
        loaded, scheduler, scale = load_for_grid(args, conditional=True)
        columns = per_digit if len(digits) > 1 else math.ceil(math.sqrt(per_digit))
        common.check_grid_size(count, columns, loaded.sample_shape, scale, "--scale, -n or the number of digits")
        labels = torch.tensor(digits, dtype=torch.int64).repeat_interleave(per_digit)
        samples = generate_samples(
            loaded,
            scheduler,
            count,
            steps=args.steps,
            eta=args.eta,
            seed=args.seed,
            batch_size=args.batch_size,
            device=args.device,
            progress=args.progress,
            labels=labels,
            guidance_scale=scale_s,
            guidance_rescale=rescale,
        )
        common.check_finite(samples)
        common.save_png(args.output, common.image_grid(common.to_uint8(samples), columns, scale))
    shown = " ".join(str(d) for d in digits) if len(digits) <= 10 else f"{len(digits)} digits"
    print(
        f"wrote {args.output} ({per_digit} samples of digit(s) {shown} from the {loaded.description}, "
        f"{args.steps} steps, guidance {scale_s:g}, rescale {rescale:g}, eta {args.eta:g}, seed {args.seed}) "
        f"in {elapsed[0]:.1f} s"
    )
    return 0
