"""``ddim.invert``: encode x_0 into the latent x_T by the exact reverse of a sampling grid (DDIM paper, sec. 4.3).

For each sampling step t -> s of a ``DDIMScheduler``'s grid, in reverse order, the eta = 0 step
(eq. 12) is solved for its start, so sampling from the result retraces the inversion (the
reconstruction error falls with N, as in the paper's Table 2, and vanishes with fixed-point refinement).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, overload

import numpy as np
import torch

from ddim.paper_step import ddim_step
from ddim.prediction import prediction_coefficients
from ddim.progress import progress_iter
from ddim.sampling import Model
from ddim.scheduler import DDIMScheduler
from ddim.validation import ArgumentValueError, check_int


@overload
def invert(
    model: Model,
    scheduler: DDIMScheduler,
    sample: torch.Tensor,
    *,
    num_inference_steps: int | None = ...,
    timesteps: Sequence[int] | np.ndarray | torch.Tensor | None = ...,
    fixed_point_iterations: int = ...,
    return_trajectory: Literal[False] = ...,
    progress: bool = ...,
) -> torch.Tensor: ...


@overload
def invert(
    model: Model,
    scheduler: DDIMScheduler,
    sample: torch.Tensor,
    *,
    num_inference_steps: int | None = ...,
    timesteps: Sequence[int] | np.ndarray | torch.Tensor | None = ...,
    fixed_point_iterations: int = ...,
    return_trajectory: Literal[True],
    progress: bool = ...,
) -> tuple[torch.Tensor, list[torch.Tensor]]: ...


def invert(
    model: Model,
    scheduler: DDIMScheduler,
    sample: torch.Tensor,
    *,
    num_inference_steps: int | None = 50,
    timesteps: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    fixed_point_iterations: int = 0,
    return_trajectory: bool = False,
    progress: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Encode x_0 into x_T by walking the sampling grid of ``scheduler`` backwards (DDIM paper, sec. 4.3).

    For each sampling step t -> s (s = ``scheduler.previous_timestep(t)``, abar_s the final alpha
    when s < 0), in reverse order, solve the eta = 0 step for x_t::

        eps = eps(model(x, t))                            x = x_s, or the current x_t estimate
        x_t = sqrt(abar_t) (x_s - sqrt(1 - abar_s) eps) / sqrt(abar_s) + sqrt(1 - abar_t) eps

    The model is called at t, the timestep the sampling step will call it at. With
    ``fixed_point_iterations`` = k > 0, x_t is re-solved k times with eps from the model at the
    current x_t estimate: the fixed point is the exact inverse of the sampling step. Sampling
    ``ddim.sample(model, scheduler, noise=x_T, ...)`` with the same grid then reconstructs ``sample``.
    Needs ``clip_sample=False`` and ``thresholding=False`` (clipping x_0 is not invertible). The
    scheduler's ``set_timesteps`` is called. Returns x_T, or (x_T, [x_0, ..., x_T]) with
    ``return_trajectory``. ``progress`` shows a tqdm bar over the steps (if tqdm is installed).
    """
    if scheduler.config.clip_sample or scheduler.config.thresholding:
        raise ArgumentValueError(
            f"invert needs clip_sample=False and thresholding=False (clipping x_0 is not invertible); got "
            f"clip_sample={scheduler.config.clip_sample}, thresholding={scheduler.config.thresholding}"
        )
    iterations = check_int("fixed_point_iterations", fixed_point_iterations, minimum=0)
    if timesteps is not None:
        scheduler.set_timesteps(timesteps=timesteps)
    else:
        scheduler.set_timesteps(num_inference_steps)
    prediction_type = scheduler.config.prediction_type
    x = sample
    trajectory = [x]
    with torch.no_grad():
        grid = [int(t) for t in reversed(scheduler.timesteps.tolist())]
        for t in progress_iter(grid, progress, "DDIM inversion"):
            s = scheduler.previous_timestep(t)
            alpha_t = float(scheduler.alphas_cumprod[t])
            alpha_s = float(scheduler.alphas_cumprod[s]) if s >= 0 else float(scheduler.final_alpha_cumprod)
            t_batch = torch.full((x.shape[0],), t, dtype=torch.int64, device=x.device)
            _, _, eps_x, eps_m = prediction_coefficients(alpha_t, prediction_type)
            x_t = x
            for _ in range(iterations + 1):
                eps = eps_x * x_t + eps_m * model(x_t, t_batch)
                x_t = ddim_step(eps, x, alpha_s, alpha_t)[0]  # the eta = 0 step from abar_s up to abar_t
            x = x_t
            trajectory.append(x)
    return (x, trajectory) if return_trajectory else x
