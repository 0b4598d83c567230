"""``ddim train``: train the digits UNet (defaults reproduce the shipped weights; --conditional the conditional ones)

Train the epsilon-prediction digits UNet on the training split (seeded, EMA weights); writes OUTPUT
(safetensors) and a same-stem .json config, loadable with `ddim sample --model OUTPUT`. With --conditional,
the class-conditional v-prediction UNet on Stable Diffusion's schedule rescaled to zero terminal SNR
(labels dropped to the null label with probability 0.1), loadable with `ddim sample --digit D --model OUTPUT`;
--no-zero-snr trains its control (the same without the rescale).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ddim.app import timing
from ddim.app.cli import arguments, outputs, usage
from ddim.app.digits.conditional_training import ConditionalTrainConfig, train_conditional
from ddim.app.digits.training import TrainConfig, save_model, train
from ddim.app.digits.unet import MAX_CHANNELS, DigitsUNet, UNetConfig
from ddim.app.wording import counted
from ddim.progress import Progress

#: The training options with TrainConfig's defaults (for both models): flag, argparse type, what it sets.
HYPERPARAMETERS: tuple[tuple[str, Callable[[str], float], str], ...] = (
    ("--batch-size", arguments.positive_int, "training digits per step"),
    ("--learning-rate", arguments.positive_float, "peak AdamW learning rate (linear warm-up, then cosine decay to 0)"),
    ("--warmup-steps", arguments.non_negative_int, "steps of the linear learning-rate warm-up"),
    ("--ema-decay", arguments.unit_interval_float, "decay of the weights' moving average, in [0, 1)"),
    ("--seed", arguments.seed_int, "seed of the initial weights and of every draw, in 0..2**32-1"),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    defaults, conditional = TrainConfig(), ConditionalTrainConfig()
    groups = UNetConfig().groups
    parser = arguments.add_command(subparsers, __doc__, run)
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="weights file (default: digits_unet.safetensors; --conditional: digits_unet_conditional.safetensors)",
    )
    parser.add_argument(
        "--steps",
        type=arguments.positive_int,
        default=None,
        help=f"default: {defaults.steps}; --conditional: {conditional.steps}",
    )
    for flag, kind, text in HYPERPARAMETERS:
        default = getattr(defaults, flag.removeprefix("--").replace("-", "_"))
        parser.add_argument(flag, type=kind, default=default, help=f"{text} (default: {default:g})")
    parser.add_argument(
        "--channels",
        type=lambda text: arguments.parse_int_in(text, 1, MAX_CHANNELS),
        default=None,
        help=f"UNet width, a multiple of {groups} up to {MAX_CHANNELS} (default: {defaults.channels}; "
        f"--conditional: {conditional.channels})",
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    parser.add_argument(
        "--conditional",
        action="store_true",
        help="train the class-conditional v-prediction model (zero terminal SNR; defaults reproduce the shipped one)",
    )
    parser.add_argument(
        "--no-zero-snr",
        dest="zero_snr",
        action="store_false",
        help="with --conditional: the control model, Stable Diffusion's schedule without the zero-SNR rescale",
    )
    parser.add_argument(
        "--random-inversion",
        type=arguments.unit_interval_float,
        default=0.0,
        metavar="P",
        help="with --conditional: negate each training digit with probability P in [0, 1) (black on white; "
        "the brightness variant of the recipe evaluation; default 0)",
    )


def write_model(model: DigitsUNet, model_config: dict[str, Any], weights: Path) -> None:
    """:func:`save_model`, its I/O errors as ``OSError`` (safetensors reports a full disk as ``SafetensorError``)."""
    from safetensors import SafetensorError

    try:
        save_model(model, model_config, weights)
    except SafetensorError as error:
        raise OSError(str(error)) from error


def run(args: argparse.Namespace) -> int:
    if not args.zero_snr and not args.conditional:
        raise usage.UsageError("--no-zero-snr needs --conditional (the unconditional model has its own schedule)")
    if args.random_inversion and not args.conditional:
        raise usage.UsageError("--random-inversion needs --conditional")
    defaults = ConditionalTrainConfig() if args.conditional else TrainConfig()
    if args.output is None:
        args.output = Path("digits_unet_conditional.safetensors" if args.conditional else "digits_unet.safetensors")
    outputs.check_output_path(args.output)
    if args.output.suffix != ".safetensors":
        raise usage.UsageError(f"--output {str(args.output)!r} must end in .safetensors")
    groups = UNetConfig().groups
    steps = defaults.steps if args.steps is None else args.steps
    channels = defaults.channels if args.channels is None else args.channels
    if channels % groups:
        raise usage.UsageError(f"--channels {channels} must be a multiple of {groups} (the UNet's groups)")
    values: dict[str, Any] = {
        "steps": steps,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "warmup_steps": min(args.warmup_steps, steps),
        "ema_decay": args.ema_decay,
        "seed": args.seed,
        "channels": channels,
    }
    config = (
        ConditionalTrainConfig(**values, zero_snr=args.zero_snr, random_inversion=args.random_inversion)
        if args.conditional
        else TrainConfig(**values)
    )
    bar = Progress(config.steps, "ddim train", "step", args.progress)

    def report(step: int, loss: float) -> None:
        bar.update()
        if step % 50 == 0:
            bar.set_note(f"loss={loss:.4f}")

    with timing.timed() as elapsed:
        try:
            if isinstance(config, ConditionalTrainConfig):
                model, model_config = train_conditional(config, report)
            else:
                model, model_config = train(config, report)
        finally:
            bar.close()
        folder = args.output.parent if str(args.output.parent) else Path(".")
        outputs.write_together(folder, lambda staging: write_model(model, model_config, staging / args.output.name))
    trained = counted(config.steps, "step")
    print(f"wrote {args.output} and {args.output.with_suffix('.json')} ({trained}) in {elapsed[0]:.0f} s")
    return 0
