"""The model interface every loop calls, model wrappers, and the checks of what a model returns.

A model is ``model(x_t, t) -> prediction`` with t one timestep per batch row (int64). Guidance and
inpainting are :class:`ModelWrapper` s: each turns a model (and its options) into a model
(:mod:`ddim.guidance`, :mod:`ddim.inpainting`), so the loops take just ``model``. A loop asks a model
for a :class:`Prediction` with :func:`predict` (what it steps with) and lets it correct the sample after
each step with :func:`after_step` (inpainting's known-region replacement); a plain callable predicts
its output and corrects nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ddim.noise import Generator
from ddim.validation import ArgumentValueError

if TYPE_CHECKING:
    from ddim.plan import GridStep

#: A denoising model: ``model(x_t, t) -> prediction`` with t one timestep per batch row (int64).
Model = Callable[..., torch.Tensor]


class NonFiniteOutputError(FloatingPointError, ValueError):
    """A model output held NaN or Inf (raised by :func:`ddim.sample` with ``check_finite=True``)."""


@dataclass(frozen=True)
class Prediction:
    """What a step is taken with: ``output`` (of the scheduler's prediction type) gives x0 (DDIM paper, eq. 9)
    and, unless ``renoise`` is given, the noise direction of eq. 12; CFG++ renoises with the unconditional
    output instead (arXiv 2406.08070)."""

    output: torch.Tensor
    renoise: torch.Tensor | None = None


class ModelWrapper:
    """A model made from ``model``: calling it returns :attr:`Prediction.output` of :meth:`predict`.

    Subclasses implement :meth:`predict`; :meth:`after_step` passes the sample to the wrapped model's
    (a wrapper corrects the sample after a step by overriding it and calling this one first).
    """

    model: Model

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **extra: Any) -> torch.Tensor:
        return self.predict(x, t, **extra).output

    def predict(self, x: torch.Tensor, t: torch.Tensor, **extra: Any) -> Prediction:
        raise NotImplementedError

    def after_step(self, x: torch.Tensor, step: GridStep, last: bool, generator: Generator) -> torch.Tensor:
        """The sample after step ``step`` (``last``: the final one), corrected by the wrapped models."""
        return after_step(self.model, x, step, last, generator)


def predict(model: Model, x: torch.Tensor, t: torch.Tensor, **extra: Any) -> Prediction:
    """A model's prediction at x_t: a wrapper's :meth:`ModelWrapper.predict`, a plain model's output."""
    if isinstance(model, ModelWrapper):
        return model.predict(x, t, **extra)
    return Prediction(model(x, t, **extra))


def after_step(model: Model, x: torch.Tensor, step: GridStep, last: bool, generator: Generator) -> torch.Tensor:
    """The sample after a step, corrected by ``model`` if it is a wrapper that corrects (inpainting)."""
    if isinstance(model, ModelWrapper):
        return model.after_step(x, step, last, generator)
    return x


def check_shape(name: str, output: object, x: torch.Tensor, where: str = "") -> torch.Tensor:
    """``output`` after checking it is a tensor shaped like x (``where``: e.g. " at step 3 (timestep 801)")."""
    if not isinstance(output, torch.Tensor) or output.shape != x.shape:
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ArgumentValueError(f"{name} output{where} must be a tensor of shape {tuple(x.shape)}, got {got}")
    return output


def check_output(name: str, output: object, x: torch.Tensor, index: int, t: int, check_finite: bool) -> None:
    """``ValueError`` unless ``output`` is a tensor shaped like x; with ``check_finite``, NaN/Inf raises too."""
    where = f" at step {index} (timestep {t})"
    tensor = check_shape(name, output, x, where)
    if check_finite and not bool(torch.isfinite(tensor).all()):
        raise NonFiniteOutputError(f"{name} output{where} contains NaN or Inf")
