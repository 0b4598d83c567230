"""The model interface every loop calls, and the checks of what a model returns."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ddim.validation import ArgumentValueError

#: A denoising model: ``model(x_t, t) -> prediction`` with t one timestep per batch row (int64).
Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class NonFiniteOutputError(FloatingPointError, ValueError):
    """A model output held NaN or Inf (raised by :func:`ddim.sample` with ``check_finite=True``)."""


def check_output(name: str, output: object, x: torch.Tensor, index: int, t: int, check_finite: bool) -> None:
    """``ValueError`` unless ``output`` is a tensor shaped like x; with ``check_finite``, NaN/Inf raises too."""
    if not isinstance(output, torch.Tensor) or output.shape != x.shape:
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ArgumentValueError(
            f"{name} output at step {index} (timestep {t}) must be a tensor of shape {tuple(x.shape)}, got {got}"
        )
    if check_finite and not bool(torch.isfinite(output).all()):
        raise NonFiniteOutputError(f"{name} output at step {index} (timestep {t}) contains NaN or Inf")
