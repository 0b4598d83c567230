"""The ``ddim`` command line: ``ddim sample | invert | interpolate | eval | train`` (also ``python -m ddim``).

Each subcommand is a module exposing ``register(subparsers)``, which adds its parser and sets
``run`` (a function of the parsed arguments returning the exit code) as the parser's default.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

import torch

from ddim import __version__
from ddim.app.cli.common import UsageError, positive_int
from ddim.model import NonFiniteOutputError
from ddim.validation import ARGUMENT_ERRORS

#: What ``ddim`` reports as one line with exit code 2: usage errors, and the library's documented
#: argument errors (a bad value or type that reached a check) and non-finite model output. Anything
#: else is a bug and surfaces as a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (UsageError, *ARGUMENT_ERRORS, NonFiniteOutputError)

#: Subcommand modules under ``ddim.app.cli``, in the order ``ddim --help`` lists them.
SUBCOMMANDS: tuple[str, ...] = ("sample", "invert", "interpolate", "eval", "train", "merge", "verify")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="ddim", description="DDIM sampling (Song, Meng & Ermon, arXiv 2010.02502) on an embedded digits model."
    )
    parser.add_argument("--version", action="version", version=f"ddim {__version__}")
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="CPU threads for PyTorch (default: 1; the embedded 8x8 model is too small to gain from more, and "
        "extra threads on a busy CPU slow it down many times)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"ddim.app.cli.{name}")
        except ModuleNotFoundError as error:
            if error.name == f"ddim.app.cli.{name}":
                continue  # a subcommand that is not part of this installation
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ddim`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code (2 for usage errors)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        return int(args.run(args))
    except USER_ERRORS as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"ddim {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ddim {args.command}: interrupted", file=sys.stderr)
        return 130


__all__ = ["build_parser", "main"]
