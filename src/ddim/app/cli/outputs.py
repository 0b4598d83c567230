"""The files a subcommand writes: checks before the work, atomic and all-or-nothing writes, PNG limits."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddim.app import atomic
from ddim.app.cli.usage import UsageError
from ddim.app.images import write_png
from ddim.model import NonFiniteOutputError

#: The largest PNG a subcommand writes, in pixels a side (so at most 2**28 pixels: a grey grid that
#: large takes 2 x 256 MB while it is built, RGB three times that; far more needs ``--out-dir``).
MAX_IMAGE_SIDE = 16384

#: Pixels between the cells of a grid and around it (``image_grid``'s default).
GRID_PAD = 3


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


def output_error(path: Path, error: OSError) -> UsageError:
    """The ``UsageError`` for an output ``path`` that cannot be written (disk full, read-only, ...)."""
    return UsageError(f"cannot write {str(path)!r}: {error.strerror or error}")


def write_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    """:func:`ddim.app.atomic.write_atomically` (no partial file, the temporary file removed on failure),
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


def check_new_output(path: Path, force: bool, option: str = "--output") -> None:
    """:func:`check_output_path`, and ``UsageError`` when ``path`` exists (a dangling link too) unless ``force``
    (``--force``) is given."""
    check_output_path(path)
    if os.path.lexists(path) and not force:
        raise output_exists(path, option)


def output_exists(path: Path, option: str = "--output") -> UsageError:
    """The ``UsageError`` for an output file that exists without ``--force``."""
    return UsageError(f"{option} {str(path)!r} exists; pass --force to replace it")


def check_png_output(path: Path, force: bool, option: str = "--output") -> None:
    """:func:`check_new_output` for a PNG: ``UsageError`` unless ``path`` ends in ``.png``, the one format written."""
    if path.suffix.lower() != ".png":
        raise UsageError(f"{option} {str(path)!r} must end in .png: ddim writes PNG images only")
    check_new_output(path, force, option)


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
