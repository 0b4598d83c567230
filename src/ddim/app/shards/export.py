"""The merged samples of a shard directory in the formats evaluators read: ``npz``, ``adm`` and ``png-folder``.

- ``npz``: :func:`ddim.app.shards.merge_shards` (``indices``, ``seeds``, ``samples`` float32 NCHW, ``labels``).
- ``adm``: an ``.npz`` with ``arr_0`` uint8 (N, H, W, C) and, for a class-conditional run, ``arr_1`` int64 (N,)
  labels, in index order (what ADM's ``image_sample.py`` writes and its evaluator and DiT's ``sample_ddp.py`` read).
- ``png-folder``: a folder with ``000000.png`` ... (index, zero-padded to at least 6 digits) and, for a
  class-conditional run, ``labels.csv`` (``index,label`` lines after that header).

Pixels: ``round(127.5 (x + 1))`` of x clipped to [-1, 1] (:func:`ddim.app.images.to_uint8`, the rule of
``--png``); DiT's ``floor(127.5 x + 128)`` equals it but for exact halves, ADM's truncation of ``127.5 (x + 1)``
gives the same or one level less.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ddim.app.atomic import TEMP_SUFFIX
from ddim.app.images import png_bytes, to_uint8
from ddim.app.shards.files import npz_bytes, write_file, writing
from ddim.app.shards.layout import ShardError
from ddim.app.shards.verify import (
    OutputExistsError,
    check_output_file,
    load_samples,
    merge_shards,
    write_output_file,
)

#: The formats of ``ddim merge --format``.
EXPORT_FORMATS: tuple[str, ...] = ("npz", "adm", "png-folder")


def nhwc_uint8(samples: np.ndarray) -> np.ndarray:
    """Samples (N, C, H, W) in [-1, 1] as uint8 (N, H, W, C) pixels ``round(127.5 (x + 1))`` (clipped)."""
    tensor = torch.from_numpy(np.ascontiguousarray(samples))
    if tensor.ndim != 4:
        raise ShardError(f"samples of shape {tuple(tensor.shape)} are not images (N, C, H, W)")
    return np.stack([to_uint8(tensor[:, c : c + 1]) for c in range(tensor.shape[1])], axis=-1)


def export_adm(out_dir: str | os.PathLike[str], target: Path, overwrite: bool = False) -> None:
    """``arr_0`` uint8 NHWC (and ``arr_1`` labels) of every sample of ``out_dir`` written to ``target``: atomically,
    and exclusively unless ``overwrite`` (:func:`ddim.app.shards.verify.write_output_file`)."""
    merged = load_samples(out_dir)
    arrays = {"arr_0": nhwc_uint8(merged["samples"])}
    if "labels" in merged:
        arrays["arr_1"] = merged["labels"]
    write_output_file(target, npz_bytes(arrays), overwrite)


def export_png_folder(out_dir: str | os.PathLike[str], target: Path, overwrite: bool = False) -> None:
    """One PNG per sample (and ``labels.csv``) in the folder ``target``: written into a hidden folder beside it,
    then renamed (:func:`place_folder`), so ``target`` appears whole or not at all."""
    merged = load_samples(out_dir)
    pixels = nhwc_uint8(merged["samples"])
    if pixels.shape[-1] not in (1, 3):
        raise ShardError(f"png-folder needs samples with 1 or 3 channels, got {pixels.shape[-1]}")
    width = max(6, len(str(len(pixels) - 1)))
    with writing(target):
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent))
    try:
        for index, image in zip(merged["indices"], pixels, strict=True):
            write_file(
                staging / f"{int(index):0{width}d}.png", png_bytes(image[..., 0] if image.shape[-1] == 1 else image)
            )
        if "labels" in merged:
            lines = [
                "index,label",
                *(f"{int(i)},{int(label)}" for i, label in zip(merged["indices"], merged["labels"], strict=True)),
            ]
            write_file(staging / "labels.csv", ("\n".join(lines) + "\n").encode())
        place_folder(staging, target, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def place_folder(staging: Path, target: Path, overwrite: bool) -> None:
    """Rename the finished folder ``staging`` to ``target``: :class:`OutputExistsError` when ``target`` exists,
    unless ``overwrite``, which moves the old one aside (hidden) first and deletes it after the rename.

    ``rename`` refuses a non-empty folder or a file in the way, so a target that appears meanwhile is refused
    too (but for an empty folder, which the rename replaces).
    """
    with writing(target):
        old: Path | None = None
        if os.path.lexists(target):
            if not overwrite:
                raise OutputExistsError(target)
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", suffix=TEMP_SUFFIX, dir=target.parent))
            os.replace(target, old / target.name)
        try:
            os.rename(staging, target)
        except OSError as error:
            if old is not None:  # put the old output back where it was
                with contextlib.suppress(OSError):
                    os.rename(old / target.name, target)
                    os.rmdir(old)
            if error.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                raise OutputExistsError(target) from error
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def export_samples(
    out_dir: str | os.PathLike[str], output: str | os.PathLike[str], form: str, overwrite: bool = False
) -> Path:
    """Write every sample of the verified ``out_dir`` to ``output`` in format ``form`` (:data:`EXPORT_FORMATS`).

    :class:`OutputExistsError` when ``output`` exists (unless ``overwrite``; a new output is taken exclusively,
    so of two concurrent merges exactly one writes it), ``ShardError`` when its folder does not exist or
    ``out_dir`` does not verify; nothing partial is left.
    """
    target = Path(output)
    if form not in EXPORT_FORMATS:
        raise ShardError(f"format={form!r} is not supported; allowed values are {list(EXPORT_FORMATS)}")
    if form == "npz":
        return merge_shards(out_dir, target, overwrite=overwrite)
    if form == "png-folder":
        if not target.parent.is_dir():
            raise ShardError(f"cannot write {str(target)!r}: folder {str(target.parent)!r} does not exist")
        if os.path.lexists(target) and not overwrite:
            raise OutputExistsError(target)
        export_png_folder(out_dir, target, overwrite)
        return target
    export_adm(out_dir, check_output_file(target, overwrite), overwrite)
    return target
