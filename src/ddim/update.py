"""The DDIM update applied to tensors, given one row of folded coefficients.

See :mod:`ddim.coefficients` for the algebra. Coefficients are either Python floats (a Python-int
timestep: no device tensors are created for them) or tensors gathered from a device table (a tensor
timestep: no value is read on the host, so no device synchronisation). Half-precision inputs are
computed in float32 and returned in their own dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ddim.coefficients import PREV_M, PREV_X, PREV_X0, STD, X0_M, X0_X, UpdateTerms

Coefficient = float | torch.Tensor


@dataclass(frozen=True)
class X0Transform:
    """What is done to the predicted x0 before it is used: nothing, clipping or dynamic thresholding."""

    clip_range: float | None = None
    threshold_ratio: float | None = None
    threshold_max: float = 1.0

    @property
    def active(self) -> bool:
        return self.clip_range is not None or self.threshold_ratio is not None


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision inputs, the input dtype otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def dynamic_threshold(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Dynamic thresholding (Imagen, arXiv 2205.11487, sec. 2.3).

    s = clamp(quantile(|x0|, ratio) per batch row, 1, max_value); x0 <- clamp(x0, -s, s) / s.
    """
    flat = x0.reshape(x0.shape[0], -1)
    work = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()
    s = torch.quantile(work.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)
    return (torch.clamp(work, -s, s) / s).to(x0.dtype).reshape(x0.shape)


def transform_x0(x0: torch.Tensor, transform: X0Transform) -> torch.Tensor:
    """Apply the configured clipping (to [-r, r]) or dynamic thresholding to a predicted x0."""
    if transform.threshold_ratio is not None:
        return dynamic_threshold(x0, transform.threshold_ratio, transform.threshold_max)
    if transform.clip_range is not None:
        return x0.clamp(-transform.clip_range, transform.clip_range)
    return x0


def accumulate(acc: torch.Tensor | None, coefficient: Coefficient, tensor: torch.Tensor) -> torch.Tensor:
    """acc + coefficient * tensor, in place on ``acc`` (a tensor this module created) when given."""
    if acc is None:
        return tensor * coefficient
    if isinstance(coefficient, torch.Tensor):
        return acc.addcmul_(tensor, coefficient)
    return acc.add_(tensor, alpha=coefficient)


def ddim_update(
    sample: torch.Tensor,
    model_output: torch.Tensor,
    coefficients: Sequence[Coefficient],
    terms: UpdateTerms,
    transform: X0Transform,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step x_t -> x_prev (DDIM paper, eq. 12) from folded coefficients.

    Returns ``(prev_sample, pred_original_sample)`` in the dtype of ``sample``.
    """
    dtype = sample.dtype
    work = compute_dtype(dtype)
    x = sample.to(work)
    m = model_output.to(work)
    if terms.x0_is_model_output:
        x0 = m
    else:
        x0 = accumulate(accumulate(None, coefficients[X0_X], x), coefficients[X0_M], m)
    x0 = transform_x0(x0, transform)
    prev: torch.Tensor | None = None
    if terms.prev_x:
        prev = accumulate(prev, coefficients[PREV_X], x)
    if terms.prev_m:
        prev = accumulate(prev, coefficients[PREV_M], m)
    if terms.prev_x0:
        prev = accumulate(prev, coefficients[PREV_X0], x0)
    if noise is not None:
        prev = accumulate(prev, coefficients[STD], noise.to(work))
    if prev is None:  # unreachable: every configuration has at least two terms
        raise RuntimeError("empty DDIM update")
    return prev.to(dtype), x0.to(dtype)
