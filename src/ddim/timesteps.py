"""Inference timestep grids: which training timesteps a sampler visits, and where each step lands.

DDIM samples on a sub-sequence tau of the training timesteps (DDIM paper, sec. 4.2). The grid is
returned in descending order (the order of sampling). For each grid point the "previous" timestep
(the one the step lands on) is needed as well; diffusers takes it as ``t - T // N`` for every
spacing, which is only a grid point for ``leading`` spacing with T divisible by N. That rule is
reproduced here as :func:`diffusers_prev_timesteps` (the default, for parity);
:func:`grid_prev_timesteps` lands on the next grid point instead (``prev_timestep_from_grid``,
custom and quadratic grids).
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import torch

from ddim.validation import ArgumentTypeError, ArgumentValueError, check_int

TimestepSpacing = Literal["leading", "trailing", "linspace", "quadratic"]
TIMESTEP_SPACINGS: tuple[str, ...] = get_args(TimestepSpacing)


def check_num_inference_steps(num_inference_steps: object, num_train_timesteps: int) -> int:
    """Return ``num_inference_steps`` as an int after checking 1 <= N <= T."""
    n = check_int("num_inference_steps", num_inference_steps)
    if not 1 <= n <= num_train_timesteps:
        raise ArgumentValueError(
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
    - ``quadratic`` (not in diffusers): :func:`quadratic_timesteps`, the paper's CIFAR10 grid.

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
    elif timestep_spacing == "quadratic":
        grid = quadratic_timesteps(num_train_timesteps, num_inference_steps)
    else:
        raise ArgumentValueError(
            f"timestep_spacing={timestep_spacing!r} is not supported; allowed values are {list(TIMESTEP_SPACINGS)}"
        )
    return np.ascontiguousarray(grid)


def check_grid(timesteps: np.ndarray, num_train_timesteps: int, what: str = "timesteps") -> None:
    """Raise ``ValueError`` unless ``timesteps`` is 1-D, in [0, T) and strictly decreasing."""
    if timesteps.ndim != 1 or timesteps.size == 0:
        raise ArgumentValueError(f"{what} must be a non-empty 1-D sequence, got shape {timesteps.shape}")
    out_of_range = (timesteps < 0) | (timesteps >= num_train_timesteps)
    if out_of_range.any():
        bad = int(timesteps[np.argmax(out_of_range)])
        raise ArgumentValueError(
            f"{what} contains {bad}, outside the allowed range [0, num_train_timesteps={num_train_timesteps})"
        )
    steps = np.diff(timesteps)
    if (steps >= 0).any():
        i = int(np.argmax(steps >= 0))
        raise ArgumentValueError(
            f"{what} must be strictly decreasing; got {int(timesteps[i])} followed by {int(timesteps[i + 1])}"
        )


def diffusers_prev_timesteps(timesteps: np.ndarray, num_train_timesteps: int, num_inference_steps: int) -> np.ndarray:
    """prev(t) = t - T // N for every t (diffusers' rule; negative means "the final alpha")."""
    return timesteps - num_train_timesteps // num_inference_steps


def quadratic_timesteps(num_train_timesteps: int, num_inference_steps: int) -> np.ndarray:
    """Descending quadratic grid tau_i = floor(c i^2), c = (T - 1) / (N - 1)^2 (DDIM paper, appendix D.2).

    The paper's CIFAR10 grid: dense at low noise, sparse at high noise, ending at T - 1. Where the
    quadratic spacing is below one timestep (small i, large N) consecutive integers are used
    instead, tau_i = max(floor(c i^2), tau_{i-1} + 1), so the grid has N distinct timesteps. N = 1
    gives [T - 1] (start from the noisiest timestep).
    """
    if num_inference_steps == 1:
        return np.array([num_train_timesteps - 1], dtype=np.int64)
    i = np.arange(num_inference_steps, dtype=np.int64)
    grid = ((num_train_timesteps - 1) * i * i) // ((num_inference_steps - 1) ** 2)  # exact integer floor
    grid = np.maximum(grid, i)  # tau_i >= i, i.e. distinct once the spacing is below 1
    return np.ascontiguousarray(np.maximum.accumulate(grid)[::-1])


def original_ddim_timesteps(num_train_timesteps: int, num_steps: int, skip_type: str = "quad") -> np.ndarray:
    """The ascending grid of the original DDIM code (github.com/ermongroup/ddim, ``runners/diffusion.py``).

    - ``uniform``: range(0, T, T // S)
    - ``quad``:    int(linspace(0, sqrt(0.8 T), S) ** 2), which stops near 0.8 T and, for large S,
      repeats small timesteps.

    Returned as is, repeats included. The original steps from each entry to the entry before it (-1,
    i.e. abar = 1, below the first); a step between two equal entries leaves x unchanged, so
    ``np.unique(grid)[::-1]`` as a custom grid (``set_timesteps(timesteps=...)``, with
    ``set_alpha_to_one=True``) gives the original's trajectory with fewer model calls.
    """
    if skip_type == "uniform":
        skip = num_train_timesteps // num_steps
        if skip < 1:
            raise ArgumentValueError(
                f"num_steps={num_steps} is out of range; allowed 1..num_train_timesteps={num_train_timesteps}"
            )
        return np.arange(0, num_train_timesteps, skip, dtype=np.int64)
    if skip_type == "quad":
        seq = np.linspace(0, np.sqrt(num_train_timesteps * 0.8), num_steps) ** 2
        return np.array([int(s) for s in seq], dtype=np.int64)
    raise ArgumentValueError(f"skip_type={skip_type!r} is not supported; allowed values are ['uniform', 'quad']")


def as_timestep_grid(timesteps: object, num_train_timesteps: int) -> np.ndarray:
    """A custom grid (sequence, array or tensor of ints) as a validated descending int64 array.

    Raises ``TypeError`` for non-integer values and ``ValueError`` for an empty, unsorted, repeated
    or out-of-range grid (see :func:`check_grid`); the grid is never reordered silently.
    """
    if isinstance(timesteps, torch.Tensor):
        timesteps = timesteps.detach().cpu().numpy()
    array = np.asarray(timesteps)
    if array.dtype == np.bool_ or array.dtype.kind not in "iu":
        raise ArgumentTypeError(f"timesteps must hold integers, got {array.dtype} values {array.tolist()!r:.80}")
    grid = np.ascontiguousarray(array.astype(np.int64))
    check_grid(grid, num_train_timesteps)
    return grid


def grid_prev_timesteps(grid: np.ndarray, num_train_timesteps: int) -> np.ndarray:
    """prev(t) = the largest grid point below t, or -1 (the final alpha) for every t in [0, T).

    On the grid this is the next grid point, so each step lands exactly where the next one starts
    and the last one lands on the final alpha (DDIM paper, eq. 12 on the sub-sequence tau).
    """
    ascending = np.sort(grid)
    below = np.searchsorted(ascending, np.arange(num_train_timesteps, dtype=np.int64), side="left") - 1
    return np.where(below >= 0, ascending[np.maximum(below, 0)], -1).astype(np.int64)
