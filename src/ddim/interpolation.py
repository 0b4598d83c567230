"""Spherical interpolation of latents x_T (DDIM paper, sec. 5.3 and appendix D.5).

Gaussian latents concentrate on a sphere, so interpolating them linearly shrinks the norm and
leaves the typical set; the paper interpolates along the great circle instead.
"""

from __future__ import annotations

import torch

from ddim.validation import ArgumentTypeError, ArgumentValueError

#: Below this angle (radians) between the two latents slerp falls back to linear interpolation.
PARALLEL_ANGLE = 1e-6
#: Within this angle (radians) of pi the two rows are antipodal: no unique great circle joins them, so slerp refuses.
ANTIPODAL_ANGLE = 1e-6


def slerp(x0: torch.Tensor, x1: torch.Tensor, weight: float | torch.Tensor) -> torch.Tensor:
    """Spherical linear interpolation x(w) = sin((1 - w) theta)/sin(theta) x0 + sin(w theta)/sin(theta) x1.

    Inputs are batch-first with at least one feature dimension, (B, ...): theta is the angle between
    each row (all dimensions but the first) of x0 and of x1, taken as 2 atan2(|u0 - u1|, |u0 + u1|) on
    the unit rows u (accurate at every angle). Rows closer than ``PARALLEL_ANGLE`` are interpolated
    linearly; a zero row (no direction) or rows within ``ANTIPODAL_ANGLE`` of opposite (every great
    circle through both) raise ``ValueError`` naming the row. For one vector pass ``x.unsqueeze(0)``.
    Rows of equal norm r stay at norm r; for unequal norms near antipodal the formula itself grows like
    |r0 - r1| / (pi - theta) (Gaussian latents have nearly equal norms).

    ``weight`` in [0, 1]: a number gives a tensor shaped like x0; a 1-D tensor of K weights gives
    K interpolants stacked in a new first dimension. Computed in float64 (float32 on MPS) and
    returned in x0's dtype.
    """
    if not isinstance(x0, torch.Tensor) or not isinstance(x1, torch.Tensor):
        raise ArgumentTypeError(f"x0 and x1 must be tensors, got {type(x0).__name__} and {type(x1).__name__}")
    if x0.shape != x1.shape or x0.ndim < 2:
        raise ArgumentValueError(
            f"x0 shape {tuple(x0.shape)} and x1 shape {tuple(x1.shape)} must be equal and batch-first with at "
            "least one feature dimension, (B, ...); for one vector pass x.unsqueeze(0)"
        )
    if not x0.is_floating_point() or not x1.is_floating_point():
        raise ArgumentTypeError(f"x0 and x1 must be floating-point tensors, got {x0.dtype} and {x1.dtype}")
    weights = torch.as_tensor(weight, dtype=torch.float64)
    if weights.ndim > 1 or bool(((weights < 0) | (weights > 1) | weights.isnan()).any()):
        raise ArgumentValueError(f"weight={weight!r} must be a number or a 1-D tensor of numbers in [0, 1]")
    work = torch.float32 if x0.device.type == "mps" else torch.float64
    a, b = x0.to(work), x1.to(work)
    theta = angles(a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)).reshape(-1, *([1] * (a.ndim - 1)))
    parallel = theta < PARALLEL_ANGLE
    safe_sin = torch.where(parallel, torch.ones_like(theta), theta.sin())
    results = []
    for w in weights.reshape(-1).tolist():
        wa = torch.where(parallel, torch.full_like(theta, 1 - w), torch.sin((1 - w) * theta) / safe_sin)
        wb = torch.where(parallel, torch.full_like(theta, w), torch.sin(w * theta) / safe_sin)
        results.append((wa * a + wb * b).to(x0.dtype))
    return results[0] if weights.ndim == 0 else torch.stack(results)


def angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The angle between each row of the (B, d) tensors ``a`` and ``b``; ``ValueError`` naming the first row
    that is not finite, has norm 0, or lies within ``ANTIPODAL_ANGLE`` of the opposite direction."""
    norms_a, norms_b = a.norm(dim=1, keepdim=True), b.norm(dim=1, keepdim=True)
    for name, norms in (("x0", norms_a), ("x1", norms_b)):
        bad = ~norms.isfinite() | (norms == 0)
        if bool(bad.any()):
            row = int(bad.reshape(-1).nonzero()[0])
            raise ArgumentValueError(
                f"{name} row {row} has norm {float(norms[row])!r}: slerp needs finite rows of norm > 0 (a direction)"
            )
    unit_a, unit_b = a / norms_a, b / norms_b
    apart, together = (unit_a - unit_b).norm(dim=1), (unit_a + unit_b).norm(dim=1)
    to_antipode = 2 * torch.atan2(together, apart)
    near = to_antipode < ANTIPODAL_ANGLE
    if bool(near.any()):
        row = int(near.nonzero()[0])
        raise ArgumentValueError(
            f"x0 and x1 row {row} are antipodal (angle pi - {float(to_antipode[row]):.3g} rad, within "
            f"ANTIPODAL_ANGLE={ANTIPODAL_ANGLE:g} of pi): no unique great circle joins them"
        )
    return 2 * torch.atan2(apart, together)
