"""Inference timestep grids: which training timesteps a sampler visits, and where each step lands.

DDIM samples on a sub-sequence tau of the training timesteps (DDIM paper, sec. 4.2). The grid is
returned in descending order (the order of sampling). For each grid point the "previous" timestep
(the one the step lands on) is needed as well; diffusers takes it as ``t - T // N`` for every
spacing, which is only a grid point for ``leading`` spacing with T divisible by N. That rule is
reproduced here as :func:`diffusers_prev_timesteps` (the default, for parity).
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

TimestepSpacing = Literal["leading", "trailing", "linspace"]
TIMESTEP_SPACINGS: tuple[str, ...] = get_args(TimestepSpacing)


def check_num_inference_steps(num_inference_steps: object, num_train_timesteps: int) -> int:
    """Return ``num_inference_steps`` as an int after checking 1 <= N <= T."""
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
        raise TypeError(
            f"num_inference_steps must be an int, got {num_inference_steps!r} ({type(num_inference_steps).__name__})"
        )
    n = int(num_inference_steps)
    if not 1 <= n <= num_train_timesteps:
        raise ValueError(
            f"num_inference_steps={n} is out of range; allowed values are 1..num_train_timesteps={num_train_timesteps}"
        )
    return n


def spaced_timesteps(
    timestep_spacing: str,
    num_train_timesteps: int,
    num_inference_steps: int,
    steps_offset: int = 0,
) -> np.ndarray:
    """Descending int64 grid of N training timesteps, as diffusers computes it.

    With T training steps and N inference steps (arXiv 2305.08891, Table 2):

    - ``linspace``: round(linspace(0, T - 1, N)), reversed.
    - ``leading``:  k * (T // N) + steps_offset for k = N-1..0.
    - ``trailing``: round(arange(T, 0, -T / N)) - 1, first N values.

    ``steps_offset`` only applies to ``leading``, as in diffusers.

    Deviation from diffusers: for some N (e.g. T=1000, N=61) floating-point ``arange`` yields N + 1
    trailing values, the last being -1 (an invalid timestep diffusers then indexes with). Only the
    first N are kept here, so the grid always has exactly N valid timesteps.
    """
    if timestep_spacing == "linspace":
        grid = np.linspace(0, num_train_timesteps - 1, num_inference_steps).round()[::-1].astype(np.int64)
    elif timestep_spacing == "leading":
        step = num_train_timesteps // num_inference_steps
        grid = (np.arange(0, num_inference_steps) * step)[::-1].astype(np.int64) + steps_offset
    elif timestep_spacing == "trailing":
        ratio = num_train_timesteps / num_inference_steps
        grid = np.round(np.arange(num_train_timesteps, 0, -ratio)[:num_inference_steps]).astype(np.int64) - 1
    else:
        raise ValueError(
            f"timestep_spacing={timestep_spacing!r} is not supported; allowed values are {list(TIMESTEP_SPACINGS)}"
        )
    return np.ascontiguousarray(grid)


def check_grid(timesteps: np.ndarray, num_train_timesteps: int, what: str = "timesteps") -> None:
    """Raise ``ValueError`` unless ``timesteps`` is 1-D, in [0, T) and strictly decreasing."""
    if timesteps.ndim != 1 or timesteps.size == 0:
        raise ValueError(f"{what} must be a non-empty 1-D sequence, got shape {timesteps.shape}")
    out_of_range = (timesteps < 0) | (timesteps >= num_train_timesteps)
    if out_of_range.any():
        bad = int(timesteps[np.argmax(out_of_range)])
        raise ValueError(
            f"{what} contains {bad}, outside the allowed range [0, num_train_timesteps={num_train_timesteps})"
        )
    steps = np.diff(timesteps)
    if (steps >= 0).any():
        i = int(np.argmax(steps >= 0))
        raise ValueError(
            f"{what} must be strictly decreasing; got {int(timesteps[i])} followed by {int(timesteps[i + 1])}"
        )


def diffusers_prev_timesteps(timesteps: np.ndarray, num_train_timesteps: int, num_inference_steps: int) -> np.ndarray:
    """prev(t) = t - T // N for every t (diffusers' rule; negative means "the final alpha")."""
    return timesteps - num_train_timesteps // num_inference_steps
