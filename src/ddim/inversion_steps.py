"""The pieces every inversion walks: the grid's steps, the guided noise estimate, the DDIM transfer.

Notation: the grid t_0 > ... > t_{N-1} of a ``DDIMScheduler``; step k calls the model at t_k
(abar_k) and lands on abar'_k (its plan's :class:`ddim.plan.GridStep`, the final alpha past timestep 0). The
eta = 0 DDIM transfer from abar to abar' with noise estimate eps (DDIM paper, eq. 12) is::

    T(x, eps) = a x + b eps,   a = sqrt(abar' / abar),   b = sqrt(1 - abar') - a sqrt(1 - abar)

(under CFG++ the two parts of b take different eps: :class:`Transfer`).

eps(x) is the model output (guided when the model is a guidance wrapper) converted to epsilon with
:func:`ddim.prediction.prediction_coefficients`, so every prediction type works.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ddim.guidance import CFG_KEYWORDS, wrap_model
from ddim.model import Model, check_output, predict
from ddim.paper_step import cfg_pp_step, ddim_step
from ddim.plan import GridStep
from ddim.prediction import prediction_coefficients
from ddim.scheduler_protocol import DDIMSchedulerLike
from ddim.validation import ArgumentValueError

Timesteps = Sequence[int] | np.ndarray | torch.Tensor | None


def grid_steps(
    scheduler: DDIMSchedulerLike, num_inference_steps: int | None, timesteps: Timesteps
) -> tuple[GridStep, ...]:
    """Set the scheduler's grid (``timesteps`` first, as ``ddim.sample`` does) and list its steps in sampling order."""
    if timesteps is not None:
        scheduler.set_timesteps(timesteps=timesteps)
    else:
        scheduler.set_timesteps(num_inference_steps)
    return scheduler.plan.grid_steps()


def check_exact_grid(steps: tuple[GridStep, ...]) -> None:
    """EDICT and BDIA divide by sqrt(abar_t): every grid timestep needs abar_t > 0."""
    for step in steps:
        if not step.alpha > 0:
            raise ArgumentValueError(
                f"timesteps: EDICT and BDIA divide by sqrt(abar_t), and timestep {step.timestep} has abar_t = "
                f"{step.alpha!r} (a zero terminal SNR schedule); pass a grid without it, e.g. timesteps=[...]"
            )


def state_dtype(like: torch.Tensor) -> torch.dtype:
    """The dtype EDICT and BDIA carry their chains in: float64 (float32 on MPS, which has no float64)."""
    return torch.float32 if like.device.type == "mps" else torch.float64


@dataclass(frozen=True)
class NoiseEstimate:
    """eps at a state: ``x0`` is the noise x0 is read from, ``direction`` the one a step renoises with (the same
    tensor, except under CFG++, arXiv 2406.08070, where it is the unconditional model's)."""

    x0: torch.Tensor
    direction: torch.Tensor


@dataclass(frozen=True)
class Denoiser:
    """eps(x, step): the model output at x cast to ``dtype`` (a wrapper guides it) as epsilon, in x's dtype."""

    model: Model
    prediction_type: str
    dtype: torch.dtype | None = None  # None: call the model in x's dtype

    def with_dtype(self, dtype: torch.dtype | None) -> Denoiser:
        return replace(self, dtype=dtype)

    def __call__(self, x: torch.Tensor, step: GridStep) -> NoiseEstimate:
        x_in = x if self.dtype is None else x.to(self.dtype)
        t = torch.full((x.shape[0],), step.timestep, dtype=torch.int64, device=x.device)
        prediction = predict(self.model, x_in, t)
        check_output("model", prediction.output, x_in, step.index, step.timestep, False)
        eps = self.epsilon(x_in, prediction.output, step).to(x.dtype)
        if prediction.renoise is None:
            return NoiseEstimate(eps, eps)
        return NoiseEstimate(eps, self.epsilon(x_in, prediction.renoise, step).to(x.dtype))

    def epsilon(self, x: torch.Tensor, output: torch.Tensor, step: GridStep) -> torch.Tensor:
        """A model output at x as epsilon (DDIM paper, eq. 9; :func:`ddim.prediction.prediction_coefficients`)."""
        if self.prediction_type == "epsilon":
            return output
        _, _, eps_x, eps_m = prediction_coefficients(step.alpha, self.prediction_type)
        return eps_x * x + eps_m * output


def make_denoiser(model: Model, scheduler: DDIMSchedulerLike, short_form: Mapping[str, Any], caller: str) -> Denoiser:
    """A :class:`Denoiser` of ``model`` wrapped as the classifier-free guidance keywords ask (:func:`wrap_model`)."""
    wrapped = wrap_model(model, scheduler, short_form, CFG_KEYWORDS, caller)
    return Denoiser(wrapped, scheduler.config.prediction_type)


@dataclass(frozen=True)
class Transfer:
    """An affine map x' = a x + b_x0 eps_x0 + b_dir eps_dir; ``b`` is the weight of one eps for both terms.

    The eta = 0 DDIM step from abar to abar' (DDIM paper, eq. 12) is a = sqrt(abar' / abar),
    b_x0 = -a sqrt(1 - abar) (through x0), b_dir = sqrt(1 - abar') (the direction), b = b_dir + b_x0.
    """

    a: float
    b: float
    b_x0: float
    b_dir: float

    def noise(self, estimate: NoiseEstimate | torch.Tensor) -> torch.Tensor:
        """b eps (one eps, or an estimate whose two parts are one tensor), or b_x0 eps_x0 + b_dir eps_dir (CFG++)."""
        if isinstance(estimate, torch.Tensor):
            return self.b * estimate
        if estimate.x0 is estimate.direction:
            return self.b * estimate.x0
        return self.b_x0 * estimate.x0 + self.b_dir * estimate.direction


def ddim_transfer(alpha: float, alpha_to: float) -> Transfer:
    """The eta = 0 DDIM transfer from abar = ``alpha`` to ``alpha_to`` (DDIM eq. 12), as a :class:`Transfer`."""
    a = math.sqrt(alpha_to / alpha)
    through_x0, direction = a * math.sqrt(1 - alpha), math.sqrt(1 - alpha_to)
    return Transfer(a, direction - through_x0, -through_x0, direction)


def ddim_inverse_step(denoiser: Denoiser, x: torch.Tensor, step: GridStep, iterations: int) -> torch.Tensor:
    """Solve the eta = 0 step ``step`` for its start x_t given its end ``x`` (DDIM paper, sec. 4.3).

    x_t = T^{-1}(x, eps(x)) with eps read at the step's own timestep, then re-solved ``iterations`` times
    with eps(x_t) at the current estimate (its fixed point is the exact inverse). Under CFG++ the inverse
    reads x0 with the direction's eps and renoises with x0's (the step solved for x_t: the roles swap).
    """
    x_t = x
    for _ in range(iterations + 1):
        estimate = denoiser(x_t, step)
        if estimate.x0 is estimate.direction:
            x_t = ddim_step(estimate.x0, x, step.alpha_to, step.alpha)[0]
        else:
            x_t = cfg_pp_step(estimate.direction, estimate.x0, x, step.alpha_to, step.alpha)[0]
    return x_t
