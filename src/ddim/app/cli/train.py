"""``ddim train``: train the digits UNet (defaults reproduce the shipped weights)

Train the epsilon-prediction digits UNet on the training split (seeded, EMA weights); writes OUTPUT
(safetensors) and a same-stem .json config, loadable with `ddim sample --model OUTPUT`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ddim.app.cli.common import UsageError, add_command, check_output_path, positive_int, timed
from ddim.app.digits.training import TrainConfig, save_model, train
from ddim.progress import Progress


def register(subparsers: argparse._SubParsersAction) -> None:
    defaults = TrainConfig()
    parser = add_command(subparsers, __doc__, run)
    parser.add_argument("-o", "--output", type=Path, default=Path("digits_unet.safetensors"), help="weights file")
    parser.add_argument("--steps", type=positive_int, default=defaults.steps, help=f"default: {defaults.steps}")
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    parser.add_argument("--ema-decay", type=float, default=defaults.ema_decay)
    parser.add_argument("--channels", type=positive_int, default=defaults.channels)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    check_output_path(args.output)
    if args.output.suffix != ".safetensors":
        raise UsageError(f"--output {str(args.output)!r} must end in .safetensors")
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

    with timed() as elapsed:
        model, model_config = train(config, report)
        bar.close()
        weights, config_path = save_model(model, model_config, args.output)
    print(f"wrote {weights} and {config_path} ({config.steps} steps) in {elapsed[0]:.0f} s")
    return 0
