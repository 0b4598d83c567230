"""``ddim sample``: generate samples (default: 64 digits from the embedded model, 50 DDIM steps, eta 0)

Generate samples with DDIM and write an upscaled PNG grid. With --digit, chosen digits from the embedded
class-conditional model (v-prediction, zero terminal SNR, trailing grid) with classifier-free guidance:
-n samples per digit, one row per digit (a single digit: a square grid). With --out-dir, -n samples into
resumable shards (with --digit: the digits in turn, or 'random' for a random digit per sample).
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import torch

from ddim.app import images, timing
from ddim.app.cli import arguments, devices, loading, outputs, usage
from ddim.app.cli.sharded import add_sharded_options, run_sharded
from ddim.app.digits.conditional import (
    DEFAULT_CFG_PP_SCALE,
    DEFAULT_GUIDANCE_RESCALE,
    DEFAULT_GUIDANCE_SCALE,
    GUIDANCE_KINDS,
    NULL_LABEL,
    NUM_DIGITS,
    NUM_LABELS,
    sample_digits,
)
from ddim.app.seeding import row_generators
from ddim.app.shards.conditioning import Conditioning
from ddim.app.wording import counted
from ddim.progress import Progress
from ddim.sampling import sample
from ddim.scheduler import DDIMScheduler

#: Default -n: samples without --digit, and samples per digit with it.
DEFAULT_COUNT = 64
DEFAULT_PER_DIGIT = 16


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = arguments.add_command(subparsers, __doc__, run)
    parser.add_argument(
        "-n",
        "--num-samples",
        type=arguments.positive_int,
        default=None,
        help=f"number of samples (default: {DEFAULT_COUNT}; with --digit: per digit, default {DEFAULT_PER_DIGIT})",
    )
    arguments.add_sampling_options(parser)
    arguments.add_model_options(parser)
    arguments.add_png_output_options(parser, "samples.png")
    parser.add_argument(
        "--scale", type=arguments.positive_int, default=None, help="pixel upscaling (default: 48 / height)"
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
        "--guidance",
        choices=GUIDANCE_KINDS,
        default=None,
        help="cfg: classifier-free guidance; cfg++: CFG++ (arXiv 2406.08070): x0 from the guided v, the step "
        "renoising with the unconditional one, lambda = --guidance-scale in [0, 1] (default: cfg; needs --digit)",
    )
    group.add_argument(
        "--guidance-scale",
        type=arguments.non_negative_float,
        default=None,
        help=f"classifier-free guidance s >= 0: v = v_null + s (v_digit - v_null); 1 = none "
        f"(default: {DEFAULT_GUIDANCE_SCALE:g}; CFG++'s lambda in [0, 1], default {DEFAULT_CFG_PP_SCALE:g}; "
        "needs --digit)",
    )
    group.add_argument(
        "--guidance-rescale",
        type=lambda text: arguments.parse_real_in(text, 0.0, 1.0),
        default=None,
        help=f"guidance rescale phi in [0, 1] (arXiv 2305.08891; default: {DEFAULT_GUIDANCE_RESCALE:g}; needs --digit)",
    )


#: The --digit value that gives every sample of an --out-dir run a random digit (the "uniform" label rule).
RANDOM_DIGIT = "random"


def digit_arg(text: str) -> tuple[int, ...] | str:
    """argparse type of one --digit value: a digit 0..9, ``all`` (every digit) or ``random``."""
    if text == "all":
        return tuple(range(NUM_DIGITS))
    if text == RANDOM_DIGIT:
        return RANDOM_DIGIT
    return (arguments.parse_int_in(text, 0, NUM_DIGITS - 1),)


def conditional_digits(args: argparse.Namespace) -> list[int] | None:
    """The digits asked for (``None`` without --digit), after checking the options that need --digit."""
    if args.digit is None:
        for flag, value in (
            ("--guidance", args.guidance),
            ("--guidance-scale", args.guidance_scale),
            ("--guidance-rescale", args.guidance_rescale),
        ):
            if value is not None:
                raise usage.UsageError(f"{flag} needs --digit (the unconditional model has no guidance)")
        return None
    if RANDOM_DIGIT in args.digit:
        if len(args.digit) > 1:
            raise usage.UsageError(f"--digit {RANDOM_DIGIT} draws a digit per sample; give it alone")
        if args.out_dir is None:
            raise usage.UsageError(f"--digit {RANDOM_DIGIT} needs --out-dir (a grid has one row per chosen digit)")
        return list(range(NUM_DIGITS))
    return [digit for values in args.digit for digit in values]


def shard_conditioning(args: argparse.Namespace, digits: list[int]) -> Conditioning:
    """The conditioning of an --out-dir run with --digit: the digits in turn, or uniform with ``random``."""
    kind, scale, rescale = guidance_settings(args)
    rule = "uniform" if args.digit == [RANDOM_DIGIT] else "cycle"
    return Conditioning(tuple(digits), rule, NUM_LABELS, NULL_LABEL, scale, rescale, kind)


def guidance_settings(args: argparse.Namespace) -> tuple[str, float, float]:
    """--guidance, --guidance-scale and --guidance-rescale with their defaults, checked for the kind."""
    kind = args.guidance or "cfg"
    if kind == "cfg++":
        if args.guidance_rescale is not None:
            raise usage.UsageError("--guidance-rescale is for --guidance cfg; CFG++ has no rescale")
        scale = DEFAULT_CFG_PP_SCALE if args.guidance_scale is None else args.guidance_scale
        if scale > 1.0:
            raise usage.UsageError(f"--guidance-scale {scale:g} is out of range for --guidance cfg++; allowed: 0..1")
        return kind, scale, 0.0
    scale = DEFAULT_GUIDANCE_SCALE if args.guidance_scale is None else args.guidance_scale
    return kind, scale, DEFAULT_GUIDANCE_RESCALE if args.guidance_rescale is None else args.guidance_rescale


def generate_samples(
    loaded: loading.LoadedModel,
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
    guidance: str = "cfg",
) -> torch.Tensor:
    """Samples ``start .. start + count - 1`` of ``seed``: sample i's x_T and noise depend on seed and i only.

    With ``labels`` (one digit per sample, ``count`` of them) the model is conditional, called as
    ``model(x, t, labels)``, and guided: m = m_null + s (m_digit - m_null), then rescaled by phi.
    The model's rounding can depend on the batch size (CPU conv/linear kernels), so the bits of a
    sample may change with ``batch_size``; ``--out-dir`` runs fixed micro-batches for bit-identity.
    """
    bar = Progress(math.ceil(count / batch_size) * steps, "ddim sample", "step", progress)
    batches = []
    try:
        for first in range(start, start + count, batch_size):
            size = min(batch_size, start + count - first)
            shared: dict[str, Any] = {
                "eta": eta,
                "generator": row_generators(seed, first, size),
                "device": device,
                "callback": lambda *_: bar.update(),
            }
            if labels is not None:
                rows = labels[first - start : first - start + size]
                shared |= {"guidance": guidance, "guidance_scale": guidance_scale, "guidance_rescale": guidance_rescale}
                batch = sample_digits(loaded.model, scheduler, rows, steps=steps, **shared)
            else:
                shape = (size, *loaded.sample_shape)
                batch = sample(loaded.model, scheduler, shape, num_inference_steps=steps, progress=False, **shared)
            batches.append(batch.cpu())
    finally:
        bar.close()
    return torch.cat(batches)


def sampling_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword options of :func:`generate_samples` that the command line gives (steps, eta, seed, ...)."""
    names = ("steps", "eta", "seed", "batch_size", "device", "progress")
    return {name: getattr(args, name) for name in names}


def load_for_grid(args: argparse.Namespace, conditional: bool) -> tuple[loading.LoadedModel, DDIMScheduler, int]:
    """The model of ``--model``, its scheduler with ``--spacing`` applied and ``--steps`` checked, and the PNG
    upscale factor (``--scale``, or about 48 pixels a side)."""
    loaded = loading.load_model(args.model, args.device, conditional=conditional)
    scheduler = loading.configure_spacing(loaded.scheduler, args.spacing)
    loading.check_steps(args.steps, scheduler)
    return loaded, scheduler, args.scale or max(1, 48 // loaded.sample_shape[-2])


def run(args: argparse.Namespace) -> int:
    devices.check_device(args.device)
    digits = conditional_digits(args)
    if args.out_dir is not None:
        args.num_samples = args.num_samples or DEFAULT_COUNT
        return run_sharded(args, shard_conditioning(args, digits) if digits is not None else None)
    if digits is not None:
        return run_conditional(args, digits)
    args.num_samples = args.num_samples or DEFAULT_COUNT
    outputs.check_png_output(args.output, args.force)
    with timing.timed() as elapsed:
        loaded, scheduler, scale = load_for_grid(args, conditional=False)
        columns = math.ceil(math.sqrt(args.num_samples))
        lower = "--scale or -n (--out-dir writes any number of samples)"
        outputs.check_grid_size(args.num_samples, columns, loaded.sample_shape, scale, lower)
        samples = generate_samples(loaded, scheduler, args.num_samples, **sampling_options(args))
        outputs.check_finite(samples)
        outputs.save_png(args.output, images.image_grid(images.to_uint8(samples), columns, scale))
    print(
        f"wrote {args.output} ({counted(args.num_samples, 'sample')} of the {loaded.description}, "
        f"{counted(args.steps, 'step')}, eta {args.eta:g}, seed {args.seed}) in {elapsed[0]:.1f} s"
    )
    return 0


def run_conditional(args: argparse.Namespace, digits: list[int]) -> int:
    """``--digit``: -n samples of each digit from the conditional model, one row per digit (row-major seeds)."""
    per_digit = args.num_samples or DEFAULT_PER_DIGIT
    count = per_digit * len(digits)
    kind, scale_s, rescale = guidance_settings(args)
    outputs.check_png_output(args.output, args.force)
    with timing.timed() as elapsed:
        loaded, scheduler, scale = load_for_grid(args, conditional=True)
        columns = per_digit if len(digits) > 1 else math.ceil(math.sqrt(per_digit))
        outputs.check_grid_size(count, columns, loaded.sample_shape, scale, "--scale, -n or the number of digits")
        labels = torch.tensor(digits, dtype=torch.int64).repeat_interleave(per_digit)
        guidance = {"guidance": kind, "guidance_scale": scale_s, "guidance_rescale": rescale}
        options: dict[str, Any] = {**guidance, **sampling_options(args)}
        samples = generate_samples(loaded, scheduler, count, labels=labels, **options)
        outputs.check_finite(samples)
        outputs.save_png(args.output, images.image_grid(images.to_uint8(samples), columns, scale))
    shown = " ".join(str(d) for d in digits) if len(digits) <= 10 else counted(len(digits), "digit")
    print(
        f"wrote {args.output} ({counted(per_digit, 'sample')} of digit(s) {shown} "
        f"from the {loaded.description}, {counted(args.steps, 'step')}, {kind} guidance {scale_s:g}, "
        f"rescale {rescale:g}, "
        f"eta {args.eta:g}, seed {args.seed}) in {elapsed[0]:.1f} s"
    )
    return 0
