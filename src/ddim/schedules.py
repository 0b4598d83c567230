"""Noise schedules: betas, alphas and their cumulative products.

The forward process of DDPM/DDIM is q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) with
abar_t = prod_{s<=t} (1 - beta_s) (DDIM paper, eq. 4, where their alpha_t is our abar_t).

All tables are built in float32 exactly as diffusers builds them, so that ``alphas_cumprod`` is
bit-identical to diffusers'; consumers that need more precision widen these float32 values to
float64 before deriving further quantities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
import torch

from ddim.validation import ArgumentTypeError, ArgumentValueError, check_int

BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2"]
BETA_SCHEDULES: tuple[str, ...] = get_args(BetaSchedule)

#: Largest ``num_train_timesteps`` T: the schedule tables are a few tensors of length T, kept to a few MB
#: (100x the usual 1000), so that a hostile config cannot exhaust the memory.
MAX_TRAIN_TIMESTEPS = 100_000

#: Largest beta allowed by the cosine schedule (Nichol & Dhariwal, arXiv 2102.09672, sec. 3.2).
COSINE_MAX_BETA = 0.999


def cosine_alpha_bar(t: float) -> float:
    """abar(t) = cos^2(((t + s) / (1 + s)) * pi / 2) with s = 0.008 (arXiv 2102.09672, eq. 17)."""
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def cosine_betas(num_train_timesteps: int, max_beta: float = COSINE_MAX_BETA) -> torch.Tensor:
    """beta_i = min(1 - abar((i + 1) / T) / abar(i / T), max_beta), as float32."""
    betas = [
        min(
            1 - cosine_alpha_bar((i + 1) / num_train_timesteps) / cosine_alpha_bar(i / num_train_timesteps),
            max_beta,
        )
        for i in range(num_train_timesteps)
    ]
    return torch.tensor(betas, dtype=torch.float32)


def make_betas(
    beta_schedule: str,
    num_train_timesteps: int,
    beta_start: float,
    beta_end: float,
) -> torch.Tensor:
    """Betas (float32, length T) of a named schedule.

    - ``linear``: evenly spaced from beta_start to beta_end (DDPM, Ho et al. 2020, sec. 4).
    - ``scaled_linear``: evenly spaced in sqrt(beta), then squared (Stable Diffusion).
    - ``squaredcos_cap_v2``: the cosine schedule of Nichol & Dhariwal (arXiv 2102.09672).
    """
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        return cosine_betas(num_train_timesteps)
    raise ArgumentValueError(
        f"beta_schedule={beta_schedule!r} is not supported; allowed values are {list(BETA_SCHEDULES)}"
    )


def check_num_train_timesteps(num_train_timesteps: object) -> int:
    """``num_train_timesteps`` as an int in 1..:data:`MAX_TRAIN_TIMESTEPS`."""
    return check_int("num_train_timesteps", num_train_timesteps, 1, MAX_TRAIN_TIMESTEPS)


def check_steps_offset(steps_offset: object, num_train_timesteps: int) -> int:
    """``steps_offset`` as an int in 0..T - 1: the ``leading`` grid k * (T // N) + steps_offset starts at the offset,
    so any other offset puts it outside [0, T) whatever the number of steps N (diffusers takes any int, then
    fails at a step beyond the table or, for a negative offset, silently indexes the table from its end)."""
    return check_int("steps_offset", steps_offset, 0, num_train_timesteps - 1)


def betas_from_array(
    trained_betas: Sequence[float] | np.ndarray | torch.Tensor, num_train_timesteps: int
) -> torch.Tensor:
    """Validate explicit betas: a 1-D sequence of length T of real numbers, every value in (0, 1]."""
    try:
        array = np.asarray(trained_betas.detach().cpu().double() if torch.is_tensor(trained_betas) else trained_betas)
    except (ValueError, TypeError, RuntimeError):
        array = np.asarray(None)  # ragged nesting or another unconvertible value: refused below
    if array.dtype.kind not in "iuf":
        held = {"U": "strings", "S": "bytes", "b": "bools", "c": "complex numbers"}.get(array.dtype.kind, "non-numbers")
        given = f"a {type(trained_betas).__name__} of {held}" if array.ndim else repr(trained_betas)
        raise ArgumentTypeError(f"trained_betas must be a 1-D sequence of real numbers, got {given}")
    betas = torch.as_tensor(array.astype(np.float64)).to(torch.float32)
    if betas.ndim != 1 or betas.numel() != num_train_timesteps:
        raise ArgumentValueError(
            f"trained_betas must be a 1-D sequence of num_train_timesteps={num_train_timesteps} values, "
            f"got shape {tuple(betas.shape)}"
        )
    check_betas(betas, "trained_betas")
    return betas


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Rescale betas so that the last timestep has zero SNR (arXiv 2305.08891, Algorithm 1).

    sqrt(abar) is shifted so its last value is 0 and scaled so its first value is unchanged:
    sqrt(abar)' = (sqrt(abar) - sqrt(abar_T)) * sqrt(abar_0) / (sqrt(abar_0) - sqrt(abar_T)).
    """
    root = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first = root[0].clone()
    last = root[-1].clone()
    root = (root - last) * (first / (first - last))
    alphas_bar = root**2
    alphas = torch.cat([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1 - alphas


def alphas_cumprod_from_betas(betas: torch.Tensor) -> torch.Tensor:
    """abar_t = prod_{s<=t} (1 - beta_s), in the dtype of ``betas`` (float32 for diffusers parity)."""
    return torch.cumprod(1.0 - betas, dim=0)


def check_betas(betas: torch.Tensor, what: str, source: str | None = None) -> None:
    """``ValueError`` naming the first beta outside (0, 1] (NaN included): every beta is a variance fraction.

    ``what`` names the betas (``trained_betas``); ``source`` the arguments they were made from, if any.
    """
    bad = ~((betas > 0) & (betas <= 1))
    if bool(bad.any()):
        index = int(torch.nonzero(bad)[0])
        origin = f" ({source} gives it in float32)" if source else ""
        raise ArgumentValueError(f"{what} must lie in (0, 1]; {what}[{index}]={float(betas[index])!r}{origin}")
