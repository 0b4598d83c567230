"""The README's guidance picture: one row per digit, one panel per (guidance scale, guidance rescale).

Every panel is drawn from the same starting noise with the embedded conditional model (trailing grid,
S steps, eta 0), so panels differ only in guidance. Run (about 20 s on one CPU core)::

    python examples/recipe_picture.py docs/recipe_guidance.png
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from ddim.app.atomic import write_atomically
from ddim.app.digits import SAMPLE_SHAPE, load_pretrained, sample_digits, to_images
from ddim.app.images import image_grid
from ddim.app.recipe_evaluation import balanced_digits
from ddim.scheduler import DDIMScheduler

#: (guidance scale, guidance rescale) of each panel, left to right.
PANELS: tuple[tuple[float, float], ...] = ((1.0, 0.0), (3.0, 0.0), (3.0, 0.7), (8.0, 0.0), (8.0, 0.7))
LABEL_HEIGHT = 18


def panel(
    model: Any, scheduler: DDIMScheduler, noise: torch.Tensor, scale: float, rescale: float, steps: int
) -> np.ndarray:
    """The guided samples of ``noise`` (10 * per_digit, digit-major) as uint8 images."""
    per_digit = noise.shape[0] // 10
    x = sample_digits(
        model,
        scheduler,
        balanced_digits(per_digit),
        steps=steps,
        guidance_scale=scale,
        guidance_rescale=rescale,
        noise=noise,
    )
    return to_images(x)


def picture(per_digit: int = 4, steps: int = 50, seed: int = 0, zoom: int = 4) -> np.ndarray:
    """Every panel of :data:`PANELS` side by side, each captioned with its s and phi."""
    model, scheduler = load_pretrained(conditional=True)
    noise = torch.randn((10 * per_digit, *SAMPLE_SHAPE), generator=torch.Generator().manual_seed(seed))
    columns = []
    for scale, rescale in PANELS:
        grid = image_grid(panel(model, scheduler, noise, scale, rescale, steps), per_digit, zoom)
        caption = Image.new("L", (grid.shape[1], LABEL_HEIGHT), 255)
        ImageDraw.Draw(caption).text((4, 3), f"s={scale:g} phi={rescale:g}", fill=0)
        columns.append(np.concatenate([np.asarray(caption), grid.reshape(grid.shape[0], grid.shape[1])], axis=0))
        columns.append(np.full((columns[-1].shape[0], 6), 255, dtype=np.uint8))
    return np.concatenate(columns[:-1], axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--per-digit", type=int, default=4)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    image = Image.fromarray(picture(args.per_digit, args.steps, args.seed))
    write_atomically(args.output, lambda tmp: image.save(tmp, format="PNG"))
    print(f"wrote {args.output} ({image.width}x{image.height})")


if __name__ == "__main__":
    main()
