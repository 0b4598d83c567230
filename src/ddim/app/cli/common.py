"""Shared pieces of the ``ddim`` subcommands: options, model loading, generators, PNG output."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
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
from ddim.model import Model
from ddim.scheduler import DDIMScheduler
from ddim.validation import ArgumentValueError


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
def parse_int_at_least(text: str, minimum: int) -> int:
    """``text`` as an int >= ``minimum``, else ``argparse.ArgumentTypeError`` naming the value."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{value} is not allowed; it must be an integer >= {minimum}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    return parse_int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an int >= 0 (seeds)."""
    return parse_int_at_least(text, 0)


def non_negative_float(text: str) -> float:
    """argparse type: a finite float >= 0 (used for eta)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{value} is not allowed; it must be a finite number >= 0")
    return value


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
        "--seed", type=non_negative_int, default=0, help="seed >= 0; sample i has its own generator (default: 0)"
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


def load_model(path: Path | None, device: str) -> LoadedModel:
    """The embedded digits model, a safetensors digits UNet, or a local diffusers pipeline folder."""
    from ddim.app import digits

    try:
        torch_device = torch.device(device)
    except RuntimeError as error:
        raise UsageError(f"--device {device!r} is not a torch device: {error}") from error
    if path is None:
        unet, scheduler = digits.load_pretrained(torch_device)
        return LoadedModel(unet, scheduler, (1, 8, 8), "embedded digits model")
    if path.is_dir():
        return load_diffusers_pipeline(path, torch_device)
    try:
        unet, scheduler = digits.load_model(path, device=torch_device)
    except ValueError as error:
        raise UsageError(str(error)) from error
    return LoadedModel(unet, scheduler, (1, 8, 8), f"digits UNet {path}")


def load_diffusers_pipeline(folder: Path, device: torch.device) -> LoadedModel:
    """A diffusers pipeline folder's ``unet`` (safetensors only) with our ``DDIMScheduler`` from its config."""
    unet_folder = folder / "unet"
    if not (folder / "model_index.json").is_file() or not unet_folder.is_dir():
        raise UsageError(f"--model {str(folder)!r} is a folder but not a diffusers pipeline (no model_index.json/unet)")
    if not any(unet_folder.glob("*.safetensors")):
        raise UsageError(
            f"--model {str(folder)!r}: the unet has no .safetensors weights; pickle checkpoints (.bin) are refused"
        )
    try:
        from diffusers import UNet2DModel
    except ImportError as error:
        raise UsageError("--model with a diffusers pipeline folder needs diffusers: pip install diffusers") from error
    try:
        unet = UNet2DModel.from_pretrained(unet_folder, use_safetensors=True).to(device).eval()
        scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as error:
        raise UsageError(f"--model {str(folder)!r} cannot be loaded: {error}") from error
    if not isinstance(scheduler, DDIMScheduler):
        raise UsageError(f"--model {str(folder)!r}: the scheduler config could not be read")
    if scheduler.config.clip_sample and not scheduler.config.thresholding:
        print(
            "ddim: note: this pipeline's scheduler config has clip_sample=True; deterministic sampling with many "
            "steps degrades under it (see the README, 'The clip_sample trap')",
            file=sys.stderr,
        )

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return unet(x, t).sample

    size = unet.config.sample_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return LoadedModel(model, scheduler, (int(unet.config.in_channels), height, width), f"diffusers pipeline {folder}")


def configure_spacing(scheduler: DDIMScheduler, spacing: str | None) -> DDIMScheduler:
    """``scheduler`` with ``timestep_spacing`` replaced when ``spacing`` is given."""
    if spacing is None or spacing == scheduler.config.timestep_spacing:
        return scheduler
    return DDIMScheduler.from_config(scheduler.config, timestep_spacing=spacing)


# --------------------------------------------------------------------------- images
def write_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    """:func:`ddim.atomic.write_atomically`, with ``UsageError`` when ``path`` cannot be written."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"cannot write {str(path)!r}: folder {str(folder)!r} does not exist")
    try:
        atomic.write_atomically(path, write)
    except OSError as error:
        raise UsageError(f"cannot write {str(path)!r}: {error.strerror or error}") from error


def save_png(path: Path, image: np.ndarray) -> None:
    """Write a uint8 grey (H, W) or RGB (H, W, 3) image as PNG, atomically."""
    write_atomically(path, lambda tmp: write_png(tmp, image))


def save_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def check_output_path(path: Path) -> None:
    """``UsageError`` early (before any computation) when ``path``'s folder is missing or ``path`` is a folder."""
    if path.is_dir():
        raise UsageError(f"output path {str(path)!r} is a folder; give a file name")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"cannot write {str(path)!r}: folder {str(folder)!r} does not exist")


@contextmanager
def timed() -> Iterator[list[float]]:
    """Context manager yielding a list that holds the elapsed seconds once the block ends."""
    elapsed: list[float] = []
    start = time.perf_counter()
    try:
        yield elapsed
    finally:
        elapsed.append(time.perf_counter() - start)
