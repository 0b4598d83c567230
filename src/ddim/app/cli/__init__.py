"""The ``ddim`` command line: ``ddim sample | invert | interpolate | eval | train`` (also ``python -m ddim``).

Each subcommand is a module exposing ``register(subparsers)``, which adds its parser and sets
``run`` (a function of the parsed arguments returning the exit code) as the parser's default.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

import torch

from ddim import __version__
from ddim.app.cli.arguments import parse_int_in
from ddim.app.cli.usage import UsageError
from ddim.model import NonFiniteOutputError
from ddim.validation import ARGUMENT_ERRORS

#: What ``ddim`` reports as one line with exit code 2: usage errors, and the library's documented
#: argument errors (a bad value or type that reached a check) and non-finite model output. Anything
#: else is a bug and surfaces as a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (UsageError, *ARGUMENT_ERRORS, NonFiniteOutputError)

#: Subcommand modules under ``ddim.app.cli``, in the order ``ddim --help`` lists them.
SUBCOMMANDS: tuple[str, ...] = ("sample", "invert", "interpolate", "eval", "train", "merge", "verify")
#: Options of ``ddim`` itself, which go before the subcommand.
GLOBAL_OPTIONS: tuple[str, ...] = ("--threads", "--version")
#: Most ``--threads``: the CPUs of this machine (PyTorch crashes when asked for many thousands).
MAX_THREADS = os.cpu_count() or 1


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (exit code 2), like every other ``ddim`` error."""

    def error(self, message: str) -> NoReturn:
        first = message.splitlines()[0] if message else "invalid arguments"
        self.exit(2, f"{self.prog}: error: {first} (see {self.prog} --help)\n")


def unrecognized(extras: Sequence[str]) -> str:
    """The message for arguments no parser took, with a hint when a global option follows the subcommand."""
    message = f"unrecognized arguments: {' '.join(extras)}"
    misplaced = [arg.split("=")[0] for arg in extras if arg.split("=")[0] in GLOBAL_OPTIONS]
    if misplaced:
        message += (
            f"; {misplaced[0]} is an option of ddim itself and goes before the subcommand: ddim {misplaced[0]} ..."
        )
    return message


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available subcommand registered."""
    parser = Parser(
        prog="ddim", description="DDIM sampling (Song, Meng & Ermon, arXiv 2010.02502) on an embedded digits model."
    )
    parser.add_argument("--version", action="version", version=f"ddim {__version__}")
    parser.add_argument(
        "--threads",
        type=lambda text: parse_int_in(text, 1, MAX_THREADS),
        default=1,
        help=f"CPU threads for PyTorch, 1..{MAX_THREADS} (default: 1; the embedded 8x8 model is too small to gain "
        "from more, and extra threads on a busy CPU slow it down many times)",
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
    """Run ``ddim`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code (2 for usage errors).

    Every error of the user's making is one line on stderr with exit code 2; ``--help`` and
    ``--version`` return 0.
    """
    parser = build_parser()
    try:
        args, extras = parser.parse_known_args(argv)
        if extras:
            parser.error(unrecognized(extras))
    except SystemExit as exit_:  # argparse: --help, --version, or an error already printed
        return exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 2
    try:
        torch.set_num_threads(args.threads)
        return int(args.run(args))
    except USER_ERRORS as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"ddim {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ddim {args.command}: interrupted", file=sys.stderr)
        return 130


__all__ = ["build_parser", "main"]
