"""Shared pieces of the ``ddim`` subcommands: options and their checks, model loading, output files."""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddim import atomic
from ddim.app.images import image_grid as image_grid
from ddim.app.images import to_uint8 as to_uint8
from ddim.app.images import write_png
from ddim.app.seeding import SEED_LIMIT
from ddim.model import Model, NonFiniteOutputError
from ddim.scheduler import DDIMScheduler
from ddim.validation import ArgumentValueError, check_real, describe_range

#: The largest PNG a subcommand writes, in pixels a side (so at most 2**28 pixels: a grey grid that
#: large takes 2 x 256 MB while it is built, RGB three times that; far more needs ``--out-dir``).
MAX_IMAGE_SIDE = 16384
#: Pixels between the cells of a grid and around it (``image_grid``'s default).
GRID_PAD = 3
#: Device types ``--device`` accepts (with an index, ``cuda:1``).
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


class UsageError(Exception):
    """An error of the user's making: ``ddim`` prints its message on one line and exits with code 2."""


# --------------------------------------------------------------------------- subcommands
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


# --------------------------------------------------------------------------- argument types
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


def add_sampling_options(parser: argparse.ArgumentParser, steps: int = 50) -> None:
    """--steps, --eta, --spacing, --seed, --batch-size."""
    parser.add_argument("--steps", type=positive_int, default=steps, help=f"DDIM steps S (default: {steps})")
    parser.add_argument(
        "--eta", type=non_negative_float, default=0.0, help="noise scale: 0 = deterministic DDIM, 1 = DDPM-like"
    )
    parser.add_argument(
        "--spacing",
        choices=("leading", "trailing", "linspace"),
        default=None,
        help="timestep spacing (default: the model's scheduler config)",
    )
    parser.add_argument(
        "--seed", type=seed_int, default=0, help="seed in 0..2**32-1; sample i has its own generator (default: 0)"
    )
    parser.add_argument("--batch-size", type=positive_int, default=256, help="samples per model call (default: 256)")


# --------------------------------------------------------------------------- models
@dataclass
class LoadedModel:
    """A model callable model(x_t, t) -> prediction, its scheduler, and the shape of one sample."""

    model: Model
    scheduler: DDIMScheduler
    sample_shape: tuple[int, ...]
    description: str


def load_model(path: Path | None, device: str, conditional: bool = False) -> LoadedModel:
    """The embedded digits model, a safetensors digits UNet, or a local diffusers pipeline folder.

    ``conditional=True`` (``ddim sample --digit``): the embedded class-conditional model, or a
    conditional digits UNet at ``path``; its ``model`` is then called as ``model(x_t, t, labels)``.
    A conditional file where an unconditional model is needed, or the reverse, is a ``UsageError``.
    """
    from ddim.app import digits

    torch_device = check_device(device)
    if path is None:
        unet, scheduler = digits.load_pretrained(torch_device, conditional=conditional)
        name = "embedded class-conditional digits model" if conditional else "embedded digits model"
        return LoadedModel(unet, scheduler, (1, 8, 8), name)
    if path.is_dir():
        if conditional:
            raise UsageError(f"--model {str(path)!r}: --digit needs a class-conditional digits UNet (.safetensors)")
        from ddim.app.cli.pipeline_folder import load_diffusers_pipeline

        return load_diffusers_pipeline(path, torch_device)
    try:
        unet, scheduler = digits.load_model(path, device=torch_device)
    except ValueError as error:
        raise UsageError(str(error)) from error
    if conditional and not unet.config.num_classes:
        raise UsageError(f"--model {str(path)!r} is an unconditional digits UNet; --digit needs a conditional one")
    if conditional and unet.config.num_classes < digits.NUM_LABELS:
        raise UsageError(
            f"--digit takes digits 0-9 and guides them with label {digits.NULL_LABEL} (no digit), but --model "
            f"{str(path)!r} has only {unet.config.num_classes} labels (0..{unet.config.num_classes - 1}); "
            f"--digit needs a class-conditional digits UNet of {digits.NUM_LABELS} labels"
        )
    if not conditional and unet.config.num_classes:
        raise UsageError(
            f"--model {str(path)!r} is a class-conditional digits UNet; sample it with `ddim sample --digit`"
        )
    kind = "class-conditional digits UNet" if conditional else "digits UNet"
    return LoadedModel(unet, scheduler, (1, 8, 8), f"{kind} {path}")


def configure_spacing(scheduler: DDIMScheduler, spacing: str | None) -> DDIMScheduler:
    """``scheduler`` with ``timestep_spacing`` replaced when ``spacing`` is given."""
    if spacing is None or spacing == scheduler.config.timestep_spacing:
        return scheduler
    return DDIMScheduler.from_config(scheduler.config, timestep_spacing=spacing)


# --------------------------------------------------------------------------- checks before the work
def check_device(text: str) -> torch.device:
    """``--device`` as a torch device, after checking that it is a supported device type this machine has."""
    match = re.fullmatch(r"([a-z]+)(?::(\d+))?", text)
    if match is None or match.group(1) not in DEVICE_TYPES:
        allowed = ", ".join(f"{kind}, {kind}:N" if kind in ("cuda", "xpu") else kind for kind in DEVICE_TYPES)
        raise UsageError(f"--device {text!r} is not supported; allowed values are {allowed}")
    kind, index = match.group(1), int(match.group(2) or 0)
    count = device_count(kind)
    if index >= count:
        raise UsageError(f"--device {text!r} is not available: this PyTorch sees {count} {kind} device(s)")
    device = torch.device(text)
    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as error:
        raise UsageError(f"--device {text!r} cannot be used: {str(error).strip().splitlines()[0]}") from error
    return device


def device_count(kind: str) -> int:
    """How many devices of ``kind`` (one of DEVICE_TYPES) this PyTorch build can use."""
    if kind == "cpu":
        return 1
    if kind == "cuda":
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    if kind == "mps":
        return int(torch.backends.mps.is_available())
    backend = getattr(torch, kind, None)
    return int(backend.device_count()) if backend is not None and backend.is_available() else 0


def check_steps(steps: int, scheduler: DDIMScheduler, option: str = "--steps") -> int:
    """``steps`` after checking 1 <= steps <= the model's num_train_timesteps (``UsageError`` naming ``option``)."""
    total = int(scheduler.config.num_train_timesteps)
    if not 1 <= steps <= total:
        raise UsageError(
            f"{option} {steps} is out of range; allowed values are 1..{total} (the model's num_train_timesteps)"
        )
    return steps


def check_grid_size(count: int, columns: int, sample_shape: tuple[int, ...], scale: int, lower: str) -> None:
    """``UsageError`` (suggesting to lower ``lower``) when a grid of ``count`` samples is over the PNG limits."""
    rows = max(1, math.ceil(count / columns))
    height = rows * (sample_shape[-2] * scale + GRID_PAD) + GRID_PAD
    width = columns * (sample_shape[-1] * scale + GRID_PAD) + GRID_PAD
    if max(height, width) > MAX_IMAGE_SIDE:
        raise UsageError(f"the PNG would be {width}x{height} pixels, over {MAX_IMAGE_SIDE} a side; lower {lower}")


def check_finite(samples: torch.Tensor, what: str = "samples") -> torch.Tensor:
    """``samples`` after checking every value is finite (``NonFiniteOutputError`` before anything is written)."""
    finite = torch.isfinite(samples).reshape(samples.shape[0], -1).all(dim=1)
    bad = int((~finite).sum())
    if bad:
        raise NonFiniteOutputError(
            f"{bad} of {finite.numel()} {what} hold NaN or Inf values; nothing was written (the model's "
            "weights or scheduler config are broken, or eta is too large: above 1 it can exceed the schedule's noise)"
        )
    return samples


# --------------------------------------------------------------------------- output files
def output_error(path: Path, error: OSError) -> UsageError:
    """The ``UsageError`` for an output ``path`` that cannot be written (disk full, read-only, ...)."""
    return UsageError(f"cannot write {str(path)!r}: {error.strerror or error}")


def write_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    """:func:`ddim.atomic.write_atomically` (no partial file, the temporary file removed on failure),
    with ``UsageError`` when ``path`` cannot be written."""
    check_output_path(path)
    try:
        atomic.write_atomically(path, write)
    except OSError as error:
        raise output_error(path, error) from error


def write_together(folder: Path, write: Callable[[Path], Any], create: bool = False) -> None:
    """Call ``write(staging)``, a fresh hidden folder inside ``folder``, then move each file it wrote into ``folder``.

    All or nothing: when ``write`` fails (``UsageError`` for an ``OSError``) the staging folder is
    removed and no file of ``folder`` changes. ``create`` makes a missing ``folder`` (removed again on failure).
    """
    created = create and not folder.exists()
    try:
        if created:
            folder.mkdir()
        staging = Path(tempfile.mkdtemp(prefix=".ddim-", suffix=atomic.TEMP_SUFFIX, dir=folder))
    except OSError as error:
        raise output_error(folder, error) from error
    try:
        write(staging)
        for file in sorted(staging.iterdir()):
            os.replace(file, folder / file.name)
    except OSError as error:
        raise output_error(folder, error) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(folder.iterdir()):
            folder.rmdir()


def save_png(path: Path, image: np.ndarray) -> None:
    """Write a uint8 grey (H, W) or RGB (H, W, 3) image as PNG, atomically."""
    write_atomically(path, lambda tmp: write_png(tmp, image))


def check_output_path(path: Path) -> None:
    """``UsageError`` early (before any computation) when ``path`` is a folder or its folder is missing or read-only."""
    if path.is_dir():
        raise UsageError(f"output path {str(path)!r} is a folder; give a file name")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"cannot write {str(path)!r}: folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {str(path)!r}: folder {str(folder)!r} is not writable")


def output_folder(out_dir: Path | None, default: Path, first_file: str) -> Path:
    """--out-dir, an existing folder where ``first_file`` can be written, else ``default`` (made by the caller)."""
    folder = default if out_dir is None else out_dir
    if out_dir is None and not folder.exists():
        check_output_path(folder)
    elif not folder.is_dir():
        raise UsageError(f"--out-dir {str(folder)!r} is not an existing folder")
    else:
        check_output_path(folder / first_file)
    return folder


@contextmanager
def timed() -> Iterator[list[float]]:
    """Context manager yielding a list that holds the elapsed seconds once the block ends."""
    elapsed: list[float] = []
    start = time.perf_counter()
    try:
        yield elapsed
    finally:
        elapsed.append(time.perf_counter() - start)
