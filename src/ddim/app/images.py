"""Samples in [-1, 1] as uint8 pixels, tiled grids and PNG encoding (shared by the CLI and the shards)."""

from __future__ import annotations

import io
import math
import os
from typing import BinaryIO

import numpy as np
import torch

from ddim.validation import ArgumentTypeError, ArgumentValueError


def to_images(x: torch.Tensor) -> np.ndarray:
    """Samples in [-1, 1] of shape (B, 1, H, W) or (B, H, W) -> uint8 array (B, H, W), 0 black, 255 white.

    Values outside [-1, 1] are clipped (pixel = round(255 (x + 1) / 2)).
    """
    if not isinstance(x, torch.Tensor):
        raise ArgumentTypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3:
        raise ArgumentValueError(f"x must have shape (B, 1, H, W) or (B, H, W), got {tuple(x.shape)}")
    pixels = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()
    return pixels.to(torch.uint8).numpy()


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Samples (N, C, H, W) in [-1, 1] -> uint8 (N, H, W) for C = 1, (N, H, W, 3) for C = 3."""
    if x.shape[1] == 1:
        return to_images(x)
    return np.stack([to_images(x[:, c]) for c in range(3)], axis=-1)


def image_grid(images: np.ndarray, columns: int, scale: int, pad: int = 3) -> np.ndarray:
    """uint8 images (N, H, W) or (N, H, W, 3) tiled into one image, each pixel scaled up ``scale`` times."""
    if images.ndim == 3:
        images = images[..., None]
    count, height, width, channels = images.shape
    rows = max(1, math.ceil(count / columns))
    cell_h, cell_w = height * scale + pad, width * scale + pad
    canvas = np.full((rows * cell_h + pad, columns * cell_w + pad, channels), 110, dtype=np.uint8)
    big = images.repeat(scale, axis=1).repeat(scale, axis=2)
    for index in range(count):
        r, c = divmod(index, columns)
        canvas[
            pad + r * cell_h : pad + r * cell_h + height * scale, pad + c * cell_w : pad + c * cell_w + width * scale
        ] = big[index]
    return canvas[..., 0] if channels == 1 else canvas


def write_png(target: str | os.PathLike[str] | BinaryIO, image: np.ndarray) -> None:
    """Encode a uint8 grey (H, W) or RGB (H, W, 3) image as PNG into ``target``, a path or a binary file (Pillow)."""
    from PIL import Image

    Image.fromarray(image).save(target, format="PNG")


def png_bytes(image: np.ndarray) -> bytes:
    """A uint8 grey (H, W) or RGB (H, W, 3) image encoded as PNG (:func:`write_png`)."""
    buffer = io.BytesIO()
    write_png(buffer, image)
    return buffer.getvalue()
