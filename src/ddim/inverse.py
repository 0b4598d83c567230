"""DDIM inversion: encode x_0 into the latent x_T (DDIM paper, sec. 4.3 and 5.4).

With eta = 0 a DDIM step is an invertible map x_t -> x_prev once the model output is fixed. Two
ways to run it backwards:

- :class:`DDIMInverseScheduler`: diffusers' ``DDIMInverseScheduler`` (same API and numbers): an
  ascending grid whose step at t climbs from ``t - T // N`` (or the initial alpha) to t.
- :func:`invert`: the exact reverse of a ``DDIMScheduler``'s sampling grid with the same N, step
  for step, so that sampling from the result retraces the inversion (reconstruction error falls
  with N, as in the paper's Table 2, and vanishes with fixed-point refinement).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ddim.config import ConfigMixin, records_config
from ddim.sampling import epsilon_coefficients, progress_steps
from ddim.scheduler import DDIMScheduler, DDIMStepping, Timestep, check_choice
from ddim.timesteps import check_grid, check_num_inference_steps, spaced_timesteps
from ddim.update import X0Transform

INVERSE_TIMESTEP_SPACINGS = ("leading", "trailing")


class DDIMInverseScheduler(DDIMStepping, ConfigMixin):
    """diffusers' ``DDIMInverseScheduler`` (0.42.1): DDIM steps run from low to high noise.

    Same constructor, config keys and numbers. The grid is ascending; a step at grid timestep t
    maps x at s = min(t - T // N, T - 1) to x at t (abar_s, or the initial alpha when s < 0:
    1 with ``set_alpha_to_one``, else abar_0)::

        x0 = (x_s - sqrt(1 - abar_s) eps) / sqrt(abar_s)          (clipped if clip_sample)
        x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps              (DDIM paper, eq. 12 with eta = 0)

    The model output is for the model called at t on x_s, as diffusers' pipelines do. Deviations:
    a ``trailing`` grid always has exactly N timesteps, and a step at a timestep above the grid's
    last one raises ``ValueError`` instead of leaving the grid.
    """

    order = 1
    init_noise_sigma = 1.0

    @records_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        clip_sample_range: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        check_choice("timestep_spacing", timestep_spacing, INVERSE_TIMESTEP_SPACINGS)
        # The sampling scheduler validates every shared argument and builds the same schedule.
        forward = DDIMScheduler(**{k: v for k, v in self.config.items() if k in DDIMScheduler.init_keys()})
        self.betas = forward.betas
        self.alphas = forward.alphas
        self.alphas_cumprod = forward.alphas_cumprod
        self.initial_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.final_alpha_cumprod = self.initial_alpha_cumprod  # the end where a climb starts
        self.num_inference_steps = None
        self.timesteps = torch.arange(int(num_train_timesteps), dtype=torch.int64)
        self._prev_timesteps = torch.arange(int(num_train_timesteps), dtype=torch.int64)
        self._tables = {}

    def __len__(self) -> int:
        return int(self.config.num_train_timesteps)

    def set_timesteps(  # type: ignore[override]
        self, num_inference_steps: int, device: str | torch.device | None = None
    ) -> None:
        """Ascending grid: ``leading`` k * (T // N) + steps_offset, or ``trailing`` (reversed), as diffusers."""
        total = int(self.config.num_train_timesteps)
        n = check_num_inference_steps(num_inference_steps, total)
        spacing = self.config.timestep_spacing
        check_choice("timestep_spacing", spacing, INVERSE_TIMESTEP_SPACINGS)
        descending = spaced_timesteps(spacing, total, n, int(self.config.steps_offset))
        check_grid(descending, total)
        source = np.minimum(np.arange(total, dtype=np.int64) - total // n, total - 1)
        self.install_grid(np.ascontiguousarray(descending[::-1]), source, n, device)
        # install_grid tabulates (abar_t, abar_source); a climb runs from source to t: swap the columns.
        for key, pairs in list(self._tables.items()):
            self._tables[key] = pairs.flip(-1).contiguous()

    def _x0_transform(self) -> X0Transform:
        config = self.config
        return X0Transform(clip_range=float(config.clip_sample_range)) if config.clip_sample else X0Transform()

    def step(  # type: ignore[override]
        self, model_output: torch.Tensor, timestep: Timestep, sample: torch.Tensor, return_dict: bool = True
    ) -> Any:
        """One inversion step x_s -> x_t for grid timestep t (see the class docstring)."""
        host = timestep if not isinstance(timestep, torch.Tensor) else None
        if isinstance(timestep, torch.Tensor) and timestep.ndim == 0 and timestep.device.type == "cpu":
            host = int(timestep)  # a CPU scalar is read anyway; a device tensor is never synchronised
        if self.num_inference_steps is not None and isinstance(host, (int, np.integer)) and not isinstance(host, bool):
            last = int(self.timesteps[-1])
            if int(host) > last:
                raise ValueError(
                    f"timestep={int(host)} is beyond the inversion grid, whose last timestep is {last} "
                    f"(num_inference_steps={self.num_inference_steps})"
                )
        return super().step(model_output, timestep, sample, eta=0.0, return_dict=return_dict)


def invert(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    scheduler: DDIMScheduler,
    sample: torch.Tensor,
    *,
    num_inference_steps: int | None = 50,
    timesteps: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    fixed_point_iterations: int = 0,
    return_trajectory: bool = False,
    progress: bool = False,
) -> Any:
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
        raise ValueError(
            f"invert needs clip_sample=False and thresholding=False (clipping x_0 is not invertible); got "
            f"clip_sample={scheduler.config.clip_sample}, thresholding={scheduler.config.thresholding}"
        )
    if isinstance(fixed_point_iterations, bool) or not isinstance(fixed_point_iterations, int):
        raise TypeError(f"fixed_point_iterations must be an int >= 0, got {fixed_point_iterations!r}")
    if fixed_point_iterations < 0:
        raise ValueError(f"fixed_point_iterations={fixed_point_iterations} is out of range; allowed values are >= 0")
    if timesteps is not None:
        scheduler.set_timesteps(timesteps=timesteps)
    else:
        scheduler.set_timesteps(num_inference_steps)
    prediction_type = scheduler.config.prediction_type
    x = sample
    trajectory = [x]
    with torch.no_grad():
        grid = [int(t) for t in reversed(scheduler.timesteps.tolist())]
        for t in progress_steps(grid, progress, "DDIM inversion"):
            s = scheduler.previous_timestep(t)
            alpha_t = float(scheduler.alphas_cumprod[t])
            alpha_s = float(scheduler.alphas_cumprod[s]) if s >= 0 else float(scheduler.final_alpha_cumprod)
            t_batch = torch.full((x.shape[0],), t, dtype=torch.int64, device=x.device)
            eps_x, eps_m = epsilon_coefficients(alpha_t, prediction_type)
            x_t = x
            for _ in range(fixed_point_iterations + 1):
                eps = eps_x * x_t + eps_m * model(x_t, t_batch)
                x0 = (x - math.sqrt(1 - alpha_s) * eps) / math.sqrt(alpha_s)
                x_t = math.sqrt(alpha_t) * x0 + math.sqrt(1 - alpha_t) * eps
            x = x_t
            trajectory.append(x)
    return (x, trajectory) if return_trajectory else x
