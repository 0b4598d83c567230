"""Named timestep grids: Align Your Steps' published schedules and the DDIM paper's quadratic grid.

:func:`named_timesteps` returns a descending int64 grid for ``set_timesteps(timesteps=...)``:

- ``ays-sd15``, ``ays-sdxl``: Align Your Steps (Sabour, Fidler & Kreis, arXiv 2404.14507), the
  10-step schedules optimised for Stable Diffusion 1.5 and SDXL (both trained on the
  ``scaled_linear`` schedule, beta 0.00085 to 0.012, T = 1000), log-linearly interpolated to other
  step counts as the project page does (:func:`ays_noise_levels`).
- ``ddim-quadratic``: the DDIM paper's CIFAR10 grid (appendix D.2), i.e.
  ``timestep_spacing="quadratic"`` (:func:`ddim.timesteps.quadratic_timesteps`).

Interpolation is in log sigma, sigma_t = sqrt((1 - abar_t) / abar_t), not in log t: the schedules
were optimised as noise levels (the project page's ``loglinear_interp`` takes EDM's ``t_steps``, which
are noise levels, and ComfyUI's copy of it resamples the 11 published sigmas to steps + 1), and log t
is undefined at the schedules' end t = 0. The levels are then mapped to the nearest training timesteps.

Stable Video Diffusion's schedule (:data:`AYS_SVD_SIGMAS`) is left out: it is optimised for a
continuous-time model (EDM noise levels in [0.002, 700]) that has no training timesteps, so no
discrete schedule is the one it was optimised for, and nearest timesteps distort it: on
``scaled_linear`` (sigma_t in [0.029, 14.6]) 700, 54.5 and 15.886 all become t = 999, on ``linear``
(beta 1e-4 to 0.02, sigma_t in [0.010, 157]) 700 and 0.002 fall outside.
"""

from __future__ import annotations

import numpy as np

from ddim.schedules import alphas_cumprod_from_betas, make_betas
from ddim.timesteps import check_num_inference_steps, quadratic_timesteps
from ddim.validation import ArgumentValueError, check_int, check_str_choice

#: The published 10-step schedules as 11 timesteps, 10 model calls and then the end t = 0 (NVIDIA's
#: project page, research.nvidia.com/labs/toronto-ai/AlignYourSteps/howto.html; diffusers'
#: ``AysSchedules["StableDiffusionTimesteps"]`` and ``["StableDiffusionXLTimesteps"]`` hold the calls).
AYS_TIMESTEPS: dict[str, tuple[int, ...]] = {
    "ays-sd15": (999, 850, 736, 645, 545, 455, 343, 233, 124, 24, 0),
    "ays-sdxl": (999, 845, 730, 587, 443, 310, 193, 116, 53, 13, 0),
}
#: Stable Video Diffusion's 10-step noise levels (same page; diffusers' ``AysSchedules
#: ["StableDiffusionVideoSigmas"]`` ends in 0.0 instead): for reference only, see the module docstring.
AYS_SVD_SIGMAS: tuple[float, ...] = (700.0, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002)
#: The training schedule of both timestep schedules (Stable Diffusion's ``scheduler_config.json``).
AYS_BETA_SCHEDULE, AYS_BETA_START, AYS_BETA_END, AYS_NUM_TRAIN_TIMESTEPS = "scaled_linear", 0.00085, 0.012, 1000

NAMED_GRIDS: tuple[str, ...] = ("ays-sd15", "ays-sdxl", "ddim-quadratic")


def named_timesteps(name: str, num_inference_steps: int, num_train_timesteps: int = 1000) -> np.ndarray:
    """Descending int64 grid of N distinct training timesteps in [0, T), by name (:data:`NAMED_GRIDS`).

    Use as ``scheduler.set_timesteps(timesteps=named_timesteps("ays-sd15", 10))``: steps go grid
    point to grid point and the last lands on ``final_alpha_cumprod``, which is abar_0 (the AYS
    schedules' end, t = 0) with Stable Diffusion's ``set_alpha_to_one=False``. The AYS names need
    ``num_train_timesteps=1000``. A bad name, T or N raises ``ValueError`` naming it.
    """
    if name == "ays-svd":
        raise ArgumentValueError(
            f"name={name!r} is not supported: Stable Video Diffusion's schedule is for a continuous-time model "
            f"(noise levels in [0.002, 700]), with no training timesteps; allowed values are {list(NAMED_GRIDS)}"
        )
    check_str_choice("name", name, NAMED_GRIDS)
    total = check_int("num_train_timesteps", num_train_timesteps, minimum=1)
    if name == "ddim-quadratic":
        return quadratic_timesteps(total, check_num_inference_steps(num_inference_steps, total))
    if total != AYS_NUM_TRAIN_TIMESTEPS:
        raise ArgumentValueError(
            f"num_train_timesteps={total} is not supported for name={name!r}; allowed values are "
            f"[{AYS_NUM_TRAIN_TIMESTEPS}] (the training timesteps of the published schedule)"
        )
    sigmas = ays_noise_levels(name, num_inference_steps)[:-1]  # the last level is the end, not a model call
    return distinct_descending(nearest_timesteps(sigmas, ays_alphas_cumprod()), total)


def ays_alphas_cumprod() -> np.ndarray:
    """abar_t (float64, length 1000) of the AYS training schedule, from the float32 betas diffusers builds."""
    betas = make_betas(AYS_BETA_SCHEDULE, AYS_NUM_TRAIN_TIMESTEPS, AYS_BETA_START, AYS_BETA_END)
    return alphas_cumprod_from_betas(betas).double().numpy()


def noise_levels(alphas_cumprod: np.ndarray) -> np.ndarray:
    """sigma_t = sqrt((1 - abar_t) / abar_t), the noise level of x_t / sqrt(abar_t) (EDM's sigma)."""
    abar = np.asarray(alphas_cumprod, dtype=np.float64)
    return np.sqrt((1.0 - abar) / abar)


def ays_noise_levels(name: str, num_inference_steps: int) -> np.ndarray:
    """The N + 1 descending noise levels of an AYS schedule for N steps: N model calls, then the end.

    sigma_k = sigma_{t_k} of the 11 published timesteps (ComfyUI's full-precision copy of the
    project page's noise levels matches them to 1e-5), resampled to N + 1 points by
    :func:`loglinear_interp` (ComfyUI: ``loglinear_interp(sigmas, steps + 1)``). N = 10 returns the
    published levels; N = 10 m keeps them all, as every m-th level.
    """
    check_str_choice("name", name, tuple(AYS_TIMESTEPS))
    n = check_num_inference_steps(num_inference_steps, AYS_NUM_TRAIN_TIMESTEPS)
    published = noise_levels(ays_alphas_cumprod())[list(AYS_TIMESTEPS[name])]
    return loglinear_interp(published, n + 1)


def loglinear_interp(values: np.ndarray, num_points: int) -> np.ndarray:
    """Positive ``values`` v_0..v_{K-1} resampled to M = ``num_points`` values, linearly in log v.

    log v is piecewise linear through (k / (K - 1), log v_k), read at x_j = j / (M - 1):
    v'_j = exp(log v(x_j)), so v'_0 = v_0, v'_{M-1} = v_{K-1} and M = K returns ``values``
    (Align Your Steps' project page, ``loglinear_interp``). M = 1 gives [v_0].
    """
    logs = np.log(np.asarray(values, dtype=np.float64))
    knots = np.linspace(0.0, 1.0, len(logs))
    return np.exp(np.interp(np.linspace(0.0, 1.0, num_points), knots, logs))


def nearest_timesteps(sigmas: np.ndarray, alphas_cumprod: np.ndarray) -> np.ndarray:
    """For each noise level sigma, the training timestep t minimising |log sigma - log sigma_t| (int64)."""
    table = np.log(noise_levels(alphas_cumprod))
    wanted = np.log(np.asarray(sigmas, dtype=np.float64))
    return np.abs(wanted[:, None] - table[None, :]).argmin(axis=1).astype(np.int64)


def distinct_descending(grid: np.ndarray, num_train_timesteps: int) -> np.ndarray:
    """A non-increasing grid of N timesteps in [0, T) made strictly decreasing by moving points up.

    With a_j the j-th smallest: a'_j = j + max_{k <= j} (clip(a_k, k, T - N + k) - k), so where
    nearest timesteps collide (many steps at low noise) consecutive integers are used, as in
    :func:`ddim.timesteps.quadratic_timesteps`; a grid that is already distinct is returned as is.
    """
    ascending = np.asarray(grid, dtype=np.int64)[::-1]
    n = len(ascending)
    j = np.arange(n, dtype=np.int64)
    offsets = np.clip(ascending, j, num_train_timesteps - n + j) - j
    return np.ascontiguousarray((np.maximum.accumulate(offsets) + j)[::-1])
