"""The pieces every inversion walks: the grid's steps, the guided noise estimate, the DDIM transfer.

Notation: the grid t_0 > ... > t_{N-1} of a ``DDIMScheduler``; step k calls the model at t_k
(abar_k) and lands on abar'_k (``scheduler.previous_timestep(t_k)``, the final alpha at -1). The
eta = 0 DDIM transfer from abar to abar' with noise estimate eps (DDIM paper, eq. 12) is::

    T(x, eps) = a x + b eps,   a = sqrt(abar' / abar),   b = sqrt(1 - abar') - a sqrt(1 - abar)

eps(x) is the model output (classifier-free guided as in ``ddim.sample``) converted to epsilon with
:func:`ddim.prediction.prediction_coefficients`, so every prediction type works.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from ddim.guidance import check_guidance, guided_output
from ddim.model import Model
from ddim.paper_step import ddim_step
from ddim.prediction import prediction_coefficients
from ddim.stepping import DDIMStepping
from ddim.validation import ArgumentValueError

Timesteps = Sequence[int] | np.ndarray | torch.Tensor | None


@dataclass(frozen=True)
class GridStep:
    """Sampling step ``index``: the model is called at ``timestep`` (abar = ``alpha``); it lands on ``alpha_to``."""

    index: int
    timestep: int
    alpha: float
    alpha_to: float


def grid_steps(scheduler: DDIMStepping, num_inference_steps: int | None, timesteps: Timesteps) -> tuple[GridStep, ...]:
    """Set the scheduler's grid (``timesteps`` first, as ``ddim.sample`` does) and list its steps in sampling order."""
    if timesteps is not None:
        scheduler.set_timesteps(timesteps=timesteps)
    else:
        scheduler.set_timesteps(num_inference_steps)
    steps = []
    for index, t in enumerate(int(t) for t in scheduler.timesteps.tolist()):
        s = scheduler.previous_timestep(t)
        alpha_to = scheduler.alphas_cumprod[s] if s >= 0 else scheduler.final_alpha_cumprod
        steps.append(GridStep(index, t, float(scheduler.alphas_cumprod[t]), float(alpha_to)))
    return tuple(steps)


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
class Denoiser:
    """eps(x, step): the model output at x cast to ``dtype`` (guided as in ``ddim.sample``) as epsilon, in x's dtype."""

    model: Model
    unconditional_model: Model | None
    guidance_scale: float
    guidance_rescale: float
    prediction_type: str
    dtype: torch.dtype | None = None  # None: call the model in x's dtype

    def with_dtype(self, dtype: torch.dtype | None) -> Denoiser:
        return replace(self, dtype=dtype)

    def __call__(self, x: torch.Tensor, step: GridStep) -> torch.Tensor:
        x_in = x if self.dtype is None else x.to(self.dtype)
        t = torch.full((x.shape[0],), step.timestep, dtype=torch.int64, device=x.device)
        output = guided_output(
            self.model,
            self.unconditional_model,
            x_in,
            t,
            step.timestep,
            self.guidance_scale,
            self.guidance_rescale,
            False,
            step.index,
        )
        if self.prediction_type == "epsilon":
            return output.to(x.dtype)
        _, _, eps_x, eps_m = prediction_coefficients(step.alpha, self.prediction_type)
        return (eps_x * x_in + eps_m * output).to(x.dtype)


def make_denoiser(
    model: Model,
    scheduler: DDIMStepping,
    guidance_scale: float,
    unconditional_model: Model | None,
    guidance_rescale: float,
) -> Denoiser:
    """A :class:`Denoiser` after checking the guidance arguments (``ddim.guidance.check_guidance``)."""
    check_guidance(guidance_scale, unconditional_model, guidance_rescale, 1.0)
    prediction_type = scheduler.config.prediction_type
    return Denoiser(model, unconditional_model, float(guidance_scale), float(guidance_rescale), prediction_type)


def transfer(alpha: float, alpha_to: float) -> tuple[float, float]:
    """(a, b) of the eta = 0 DDIM transfer x' = a x + b eps from abar = ``alpha`` to ``alpha_to`` (DDIM eq. 12)."""
    a = math.sqrt(alpha_to / alpha)
    return a, math.sqrt(1 - alpha_to) - a * math.sqrt(1 - alpha)


def ddim_inverse_step(denoiser: Denoiser, x: torch.Tensor, step: GridStep, iterations: int) -> torch.Tensor:
    """Solve the eta = 0 step ``step`` for its start x_t given its end ``x`` (DDIM paper, sec. 4.3).

    x_t = T^{-1}(x, eps(x)) with eps read at the step's own timestep, then re-solved ``iterations`` times
    with eps(x_t) at the current estimate (its fixed point is the exact inverse).
    """
    x_t = x
    for _ in range(iterations + 1):
        x_t = ddim_step(denoiser(x_t, step), x, step.alpha_to, step.alpha)[0]
    return x_t
