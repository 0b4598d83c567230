"""The options of the ``ddim`` subcommands: subcommand parsers, argument types and the shared option groups."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path

from ddim.app.seeding import SEED_LIMIT
from ddim.validation import ArgumentValueError, check_real, describe_range


def add_command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], doc: str | None, run: Callable[..., int]
) -> argparse.ArgumentParser:
    """A subcommand parser from its module docstring: ``"``ddim NAME``: HELP"``, a blank line, DESCRIPTION."""
    first, _, rest = (doc or "").strip().partition("\n")
    match = re.fullmatch(r"``ddim (\w+)``: (.+)", first.strip())
    if match is None:
        raise ArgumentValueError(f"a subcommand docstring must start with '``ddim NAME``: help', got {first!r}")
    parser = subparsers.add_parser(match.group(1), help=match.group(2), description=rest.strip())
    parser.set_defaults(run=run)
    return parser


def parse_int_in(text: str, minimum: int, maximum: int | None = None) -> int:
    """``text`` as an int in ``minimum..maximum``, else ``argparse.ArgumentTypeError`` naming the value."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum or (maximum is not None and value > maximum):
        allowed = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise argparse.ArgumentTypeError(f"{value} is not allowed; it must be an integer {allowed}")
    return value


def parse_real_in(
    text: str, minimum: float, maximum: float | None = None, *, open_minimum: bool = False, open_maximum: bool = False
) -> float:
    """``text`` as a finite float within the bounds, else ``argparse.ArgumentTypeError`` naming the value."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    try:
        return check_real("value", value, minimum, maximum, open_minimum=open_minimum, open_maximum=open_maximum)
    except ArgumentValueError:
        allowed = describe_range(minimum, maximum, open_minimum, open_maximum, real=True)
        allowed = f"in {allowed}" if maximum is not None else allowed
        raise argparse.ArgumentTypeError(f"{value} is not allowed; it must be a finite number {allowed}") from None


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    return parse_int_in(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an int >= 0."""
    return parse_int_in(text, 0)


def seed_int(text: str) -> int:
    """argparse type: a seed, an int in 0..2**32 - 1 (what the per-sample seeding takes)."""
    return parse_int_in(text, 0, SEED_LIMIT - 1)


def non_negative_float(text: str) -> float:
    """argparse type: a finite float >= 0 (used for eta)."""
    return parse_real_in(text, 0.0)


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0."""
    return parse_real_in(text, 0.0, open_minimum=True)


def unit_interval_float(text: str) -> float:
    """argparse type: a float in [0, 1) (a decay rate)."""
    return parse_real_in(text, 0.0, 1.0, open_maximum=True)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--model, --device and --no-progress."""
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="a local diffusers pipeline folder (our scheduler swapped in) or a safetensors UNet of the embedded "
        "architecture (config from a same-stem .json next to it); default: the embedded digits model",
    )
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")


def add_png_output_options(parser: argparse.ArgumentParser, default: str) -> None:
    """-o/--output (a .png file) and --force."""
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path(default),
        help=f"the PNG to write; must end in .png (default: {default}); an existing file is refused unless --force",
    )
    add_force_option(parser)


def add_force_option(parser: argparse.ArgumentParser) -> None:
    """--force: replace an existing --output."""
    parser.add_argument("--force", action="store_true", help="replace --output if it exists")


def add_spacing_option(parser: argparse.ArgumentParser) -> None:
    """--spacing: the timestep spacing, default the model's."""
    parser.add_argument(
        "--spacing",
        choices=("leading", "trailing", "linspace"),
        default=None,
        help="timestep spacing (default: the model's scheduler config)",
    )


def add_sampling_options(parser: argparse.ArgumentParser, steps: int = 50) -> None:
    """--steps, --eta, --spacing, --seed, --batch-size."""
    parser.add_argument("--steps", type=positive_int, default=steps, help=f"DDIM steps S (default: {steps})")
    parser.add_argument(
        "--eta",
        type=non_negative_float,
        default=0.0,
        help="noise scale: 0 = deterministic DDIM, 1 = DDPM-like (default: 0)",
    )
    add_spacing_option(parser)
    parser.add_argument(
        "--seed", type=seed_int, default=0, help="seed in 0..2**32-1; sample i has its own generator (default: 0)"
    )
    parser.add_argument("--batch-size", type=positive_int, default=256, help="samples per model call (default: 256)")
