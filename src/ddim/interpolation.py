"""Spherical interpolation of latents x_T (DDIM paper, sec. 5.3 and appendix D.5).

Gaussian latents concentrate on a sphere, so interpolating them linearly shrinks the norm and
leaves the typical set; the paper interpolates along the great circle instead.
"""

from __future__ import annotations

import torch

from ddim.update import compute_dtype
from ddim.validation import ArgumentTypeError, ArgumentValueError

#: Below this angle (radians) between the two latents slerp falls back to linear interpolation.
PARALLEL_ANGLE = 1e-6


def slerp(x0: torch.Tensor, x1: torch.Tensor, weight: float | torch.Tensor) -> torch.Tensor:
    """Spherical linear interpolation x(w) = sin((1 - w) theta)/sin(theta) x0 + sin(w theta)/sin(theta) x1.

    theta = arccos(<x0, x1> / (|x0| |x1|)) is taken per batch row (all dimensions but the first).
    ``weight`` in [0, 1]: a number gives a tensor shaped like x0; a 1-D tensor of K weights gives
    K interpolants stacked in a new first dimension. Half precision is computed in float32.
    """
    if not isinstance(x0, torch.Tensor) or not isinstance(x1, torch.Tensor):
        raise ArgumentTypeError(f"x0 and x1 must be tensors, got {type(x0).__name__} and {type(x1).__name__}")
    if x0.shape != x1.shape or x0.ndim == 0:
        raise ArgumentValueError(
            f"x0 shape {tuple(x0.shape)} and x1 shape {tuple(x1.shape)} must be equal and batch-first"
        )
    weights = torch.as_tensor(weight, dtype=torch.float64)
    if weights.ndim > 1 or bool(((weights < 0) | (weights > 1) | weights.isnan()).any()):
        raise ArgumentValueError(f"weight={weight!r} must be a number or a 1-D tensor of numbers in [0, 1]")
    work = compute_dtype(x0.dtype)
    a, b = x0.to(work), x1.to(work)
    flat_a, flat_b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    cosine = (flat_a * flat_b).sum(1) / (flat_a.norm(dim=1) * flat_b.norm(dim=1))
    theta = torch.arccos(cosine.clamp(-1.0, 1.0)).reshape(-1, *([1] * (a.ndim - 1)))
    parallel = theta < PARALLEL_ANGLE
    safe_sin = torch.where(parallel, torch.ones_like(theta), theta.sin())
    results = []
    for w in weights.reshape(-1).tolist():
        wa = torch.where(parallel, torch.full_like(theta, 1 - w), torch.sin((1 - w) * theta) / safe_sin)
        wb = torch.where(parallel, torch.full_like(theta, w), torch.sin(w * theta) / safe_sin)
        results.append((wa * a + wb * b).to(x0.dtype))
    return results[0] if weights.ndim == 0 else torch.stack(results)
