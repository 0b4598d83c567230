"""What is done to the predicted x0 before it is used: nothing, clipping, or dynamic thresholding.

Clipping (diffusers' ``clip_sample``): x0 <- clamp(x0, -r, r). Dynamic thresholding (Imagen,
arXiv 2205.11487, sec. 2.3): per batch row s = clamp(quantile(|x0|, ratio), 1, max_value), then
x0 <- clamp(x0, -s, s) / s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ddim.validation import ArgumentValueError


@dataclass(frozen=True)
class X0Transform:
    """What is done to the predicted x0 before it is used: nothing, clipping or dynamic thresholding."""

    clip_range: float | None = None
    threshold_ratio: float | None = None
    threshold_max: float = 1.0

    @property
    def active(self) -> bool:
        return self.clip_range is not None or self.threshold_ratio is not None


def threshold_scale(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Per batch row s = clamp(quantile(|x0|, ratio), 1, max_value), shape (B,) (Imagen, arXiv 2205.11487, 2.3)."""
    flat = x0.reshape(x0.shape[0], -1)
    work = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()
    return row_quantile(work.abs(), ratio).clamp(min=1, max=max_value)


def row_quantile(rows: torch.Tensor, q: float) -> torch.Tensor:
    """The q-quantile of each row of a 2-D tensor, shape (B,); the numbers of ``torch.quantile(rows, q, dim=1)``.

    Linear interpolation between order statistics: with the row sorted ascending and r = q (n - 1)
    (in the rows' dtype), value = lerp(sorted[floor r], sorted[ceil r], r - floor r); a row holding a
    NaN gives NaN. Unlike ``torch.quantile`` it reads nothing on the host and traces under
    ``torch.compile(fullgraph=True)`` (no data-dependent check of q).
    """
    if not 0.0 <= q <= 1.0:
        raise ArgumentValueError(f"q={q!r} is out of range; a quantile must be in [0, 1]")
    ordered = rows.sort(dim=1).values
    last = ordered.shape[1] - 1
    rank = torch.full((ordered.shape[0], 1), q, dtype=ordered.dtype, device=ordered.device) * last
    rank = rank.masked_fill(ordered.isnan().any(dim=1, keepdim=True), last)
    below = rank.long()
    above = rank.ceil().long()
    return torch.lerp(ordered.gather(1, below), ordered.gather(1, above), rank - below).squeeze(1)


def x0_transform_of(config: Any) -> X0Transform:
    """The x0 transform a scheduler config asks for: dynamic thresholding (``thresholding``, which
    ``DDIMInverseScheduler`` configs lack), else clipping (``clip_sample``), else none."""
    if getattr(config, "thresholding", False):
        return X0Transform(
            threshold_ratio=float(config.dynamic_thresholding_ratio), threshold_max=float(config.sample_max_value)
        )
    if config.clip_sample:
        return X0Transform(clip_range=float(config.clip_sample_range))
    return NO_TRANSFORM


#: The transform of a config that neither clips nor thresholds.
NO_TRANSFORM = X0Transform()
