"""The merged samples of a shard directory in the formats evaluators read: ``npz``, ``adm`` and ``png-folder``.

- ``npz``: :func:`ddim.app.shards.merge_shards` (``indices``, ``seeds``, ``samples`` float32 NCHW, ``labels``).
- ``adm``: an ``.npz`` with ``arr_0`` uint8 (N, H, W, C) and, for a class-conditional run, ``arr_1`` int64 (N,)
  labels, in index order (what ADM's ``image_sample.py`` writes and its evaluator and DiT's ``sample_ddp.py`` read).
- ``png-folder``: a new folder with ``000000.png`` ... (index, zero-padded to at least 6 digits) and, for a
  class-conditional run, ``labels.csv`` (``index,label`` lines after that header).

Pixels: ``round(127.5 (x + 1))`` of x clipped to [-1, 1] (:func:`ddim.app.images.to_uint8`, the rule of
``--png``); DiT's ``floor(127.5 x + 128)`` equals it but for exact halves, ADM's truncation of ``127.5 (x + 1)``
gives the same or one level less.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ddim.app.images import png_bytes, to_uint8
from ddim.app.shards.files import npz_bytes, write_file, writing
from ddim.app.shards.layout import ShardError
from ddim.app.shards.verify import load_samples, merge_shards
from ddim.atomic import TEMP_SUFFIX

#: The formats of ``ddim merge --format``.
EXPORT_FORMATS: tuple[str, ...] = ("npz", "adm", "png-folder")


def nhwc_uint8(samples: np.ndarray) -> np.ndarray:
    """Samples (N, C, H, W) in [-1, 1] as uint8 (N, H, W, C) pixels ``round(127.5 (x + 1))`` (clipped)."""
    tensor = torch.from_numpy(np.ascontiguousarray(samples))
    if tensor.ndim != 4:
        raise ShardError(f"samples of shape {tuple(tensor.shape)} are not images (N, C, H, W)")
    return np.stack([to_uint8(tensor[:, c : c + 1]) for c in range(tensor.shape[1])], axis=-1)


def export_adm(out_dir: str | os.PathLike[str], target: Path) -> None:
    """``arr_0`` uint8 NHWC (and ``arr_1`` labels) of every sample of ``out_dir``, written atomically to ``target``."""
    merged = load_samples(out_dir)
    arrays = {"arr_0": nhwc_uint8(merged["samples"])}
    if "labels" in merged:
        arrays["arr_1"] = merged["labels"]
    write_file(target, npz_bytes(arrays))


def export_png_folder(out_dir: str | os.PathLike[str], target: Path) -> None:
    """One PNG per sample (and ``labels.csv``) in the new folder ``target``: written into a hidden folder beside it,
    then renamed, so ``target`` appears whole or not at all."""
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
        with writing(target):
            os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def export_samples(
    out_dir: str | os.PathLike[str], output: str | os.PathLike[str], form: str, overwrite: bool = False
) -> Path:
    """Write every sample of the verified ``out_dir`` to ``output`` in format ``form`` (:data:`EXPORT_FORMATS`).

    ``ShardError`` when ``output`` exists (a png-folder is never replaced; a file only with ``overwrite``), its
    folder does not, or ``out_dir`` does not verify; nothing partial is left.
    """
    target = Path(output)
    if form not in EXPORT_FORMATS:
        raise ShardError(f"format={form!r} is not supported; allowed values are {list(EXPORT_FORMATS)}")
    if form == "npz":
        return merge_shards(out_dir, target, overwrite=overwrite)
    if not target.parent.is_dir():
        raise ShardError(f"cannot write {str(target)!r}: folder {str(target.parent)!r} does not exist")
    if form == "png-folder":
        if target.exists():
            raise ShardError(f"{str(target)!r} exists; png-folder writes a new folder")
        export_png_folder(out_dir, target)
        return target
    if target.is_dir():
        raise ShardError(f"{str(target)!r} is a folder; give the name of the .npz file to write")
    if target.exists() and not overwrite:
        raise ShardError(f"{str(target)!r} exists; pass overwrite=True to replace it")
    export_adm(out_dir, target)
    return target
