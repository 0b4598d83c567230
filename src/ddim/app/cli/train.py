"""``ddim train``: train the digits UNet (defaults reproduce the shipped weights)

Train the epsilon-prediction digits UNet on the training split (seeded, EMA weights); writes OUTPUT
(safetensors) and a same-stem .json config, loadable with `ddim sample --model OUTPUT`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ddim.app.cli import common
from ddim.app.digits.training import TrainConfig, save_model, train
from ddim.app.digits.unet import MAX_CHANNELS, DigitsUNet, UNetConfig
from ddim.progress import Progress


def register(subparsers: argparse._SubParsersAction) -> None:
    defaults = TrainConfig()
    groups = UNetConfig().groups
    parser = common.add_command(subparsers, __doc__, run)
    parser.add_argument("-o", "--output", type=Path, default=Path("digits_unet.safetensors"), help="weights file")
    parser.add_argument("--steps", type=common.positive_int, default=defaults.steps, help=f"default: {defaults.steps}")
    parser.add_argument("--batch-size", type=common.positive_int, default=defaults.batch_size)
    parser.add_argument("--learning-rate", type=common.positive_float, default=defaults.learning_rate)
    parser.add_argument("--warmup-steps", type=common.non_negative_int, default=defaults.warmup_steps)
    parser.add_argument("--ema-decay", type=common.unit_interval_float, default=defaults.ema_decay, help="in [0, 1)")
    parser.add_argument(
        "--channels",
        type=lambda text: common.parse_int_in(text, 1, MAX_CHANNELS),
        default=defaults.channels,
        help=f"UNet width, a multiple of {groups} up to {MAX_CHANNELS} (default: {defaults.channels})",
    )
    parser.add_argument("--seed", type=common.seed_int, default=defaults.seed)
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")


def write_model(model: DigitsUNet, model_config: dict[str, Any], weights: Path) -> None:
    """:func:`save_model`, its I/O errors as ``OSError`` (safetensors reports a full disk as ``SafetensorError``)."""
    from safetensors import SafetensorError

    try:
        save_model(model, model_config, weights)
    except SafetensorError as error:
        raise OSError(str(error)) from error


def run(args: argparse.Namespace) -> int:
    common.check_output_path(args.output)
    if args.output.suffix != ".safetensors":
        raise common.UsageError(f"--output {str(args.output)!r} must end in .safetensors")
    groups = UNetConfig().groups
    if args.channels % groups:
        raise common.UsageError(f"--channels {args.channels} must be a multiple of {groups} (the UNet's groups)")
    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_steps=min(args.warmup_steps, args.steps),
        ema_decay=args.ema_decay,
        seed=args.seed,
        channels=args.channels,
    )
    bar = Progress(config.steps, "ddim train", "step", args.progress)

    def report(step: int, loss: float) -> None:
        bar.update()
        if step % 50 == 0:
            bar.set_note(f"loss={loss:.4f}")

    with common.timed() as elapsed:
        try:
            model, model_config = train(config, report)
        finally:
            bar.close()
        folder = args.output.parent if str(args.output.parent) else Path(".")
        common.write_together(folder, lambda staging: write_model(model, model_config, staging / args.output.name))
    print(f"wrote {args.output} and {args.output.with_suffix('.json')} ({config.steps} steps) in {elapsed[0]:.0f} s")
    return 0
