"""Exactly invertible DDIM sampling: EDICT (arXiv 2211.12446) and BDIA-DDIM (arXiv 2307.10829).

Plain DDIM inversion is approximate: a sampling step reads the model at the state it updates, so
its inverse has to guess that state. EDICT and BDIA make every sampling update an affine map of a
state the model does not read in that update, which is solved for exactly: ``ddim.invert(...,
method="edict" | "bdia")`` then :func:`sample_exact` reconstructs x_0 up to rounding, for any model.

Notation (:mod:`ddim.inversion_steps`): step k calls the model at t_k (abar_k) and lands on abar'_k;
T(x, eps) = a x + b eps is the eta = 0 DDIM transfer between them (DDIM paper, eq. 12); eps is the
(guided) model output as epsilon, for every prediction type.

Precision: the chains are carried in float64 (float32 on MPS, which has no float64) and the model is
called with them cast to the sample's dtype. Inversion and sampling then feed the model the same
values, and the round trip is exact to float64 rounding, even for a float32 or float16 model. Float32
chains would not be: the sampler amplifies rounding (on the digits model a 1e-7 change of x_T moves
x_0 by ~1e-5). The EDICT authors' code, which BDIA's editing code builds on, runs in float64 too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Unpack

import torch

from ddim.guidance import ClassifierFreeKeywords
from ddim.inversion_steps import (
    Denoiser,
    GridStep,
    Timesteps,
    Transfer,
    check_exact_grid,
    ddim_inverse_step,
    ddim_transfer,
    grid_steps,
    make_denoiser,
    state_dtype,
)
from ddim.model import Model
from ddim.progress import progress_iter
from ddim.scheduler_protocol import DDIMSchedulerLike
from ddim.tensor_checks import check_floating
from ddim.validation import ArgumentTypeError, ArgumentValueError, check_real, check_str_choice

__all__ = ["BDIA_GAMMA", "EDICT_P", "MAX_AMPLIFICATION", "BDIALatent", "EDICTLatent", "sample_exact"]

#: EDICT's mixing weight p (the paper's value for Stable Diffusion).
EDICT_P = 0.93
#: BDIA's gamma for exact inversion (the official code's default; its editing range is [0.92, 1]).
BDIA_GAMMA = 1.0
EXACT_METHODS = ("edict", "bdia")
#: Largest growth of rounding an exact round trip may have: float64 rounding (~1e-16) times it stays below ~1e-6.
MAX_AMPLIFICATION = 1e10


@dataclass(frozen=True, eq=False)
class EDICTLatent:
    """What EDICT inversion returns: its two chains at t_0 and the steps sampling must walk back.

    The chains are float64 tensors (see the module docstring). Attributes:
        x, y: the coupled chains x_T and y_T (equal when sampling starts from fresh noise).
        steps: the sampling steps, in sampling order (``timesteps`` lists their timesteps).
        p: the mixing weight, in [p_min(N), 1] (:func:`check_p`).
        dtype: the dtype the model is called in and x_0 is returned in (default: x's).
    """

    x: torch.Tensor
    y: torch.Tensor
    steps: tuple[GridStep, ...]
    p: float = EDICT_P
    dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        if self.dtype is None and isinstance(self.x, torch.Tensor):
            object.__setattr__(self, "dtype", self.x.dtype)
        check_latent(self)

    @property
    def timesteps(self) -> tuple[int, ...]:
        return tuple(step.timestep for step in self.steps)


@dataclass(frozen=True, eq=False)
class BDIALatent:
    """What BDIA inversion returns: the last two states, x_T at t_0 and x_next after the first step.

    The states are float64 tensors (see the module docstring). Attributes:
        x_T: the state at t_0.
        x_next: the state after step 0 (the model's input at t_1; x_0 itself when N = 1).
        steps: the sampling steps, in sampling order (``timesteps`` lists their timesteps).
        gamma: BDIA's gamma, 0 (plain DDIM sampling, not invertible) or in [gamma_min(N), 1] (:func:`check_gamma`).
        dtype: the dtype the model is called in and x_0 is returned in (default: x_T's).
    """

    x_T: torch.Tensor
    x_next: torch.Tensor
    steps: tuple[GridStep, ...]
    gamma: float = BDIA_GAMMA
    dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        if self.dtype is None and isinstance(self.x_T, torch.Tensor):
            object.__setattr__(self, "dtype", self.x_T.dtype)
        check_latent(self)

    @property
    def timesteps(self) -> tuple[int, ...]:
        return tuple(step.timestep for step in self.steps)


def check_latent(latent: EDICTLatent | BDIALatent) -> None:
    """Every field of a latent checked: run when it is built and again when it is sampled (a latent restored by
    pickle, or changed with ``object.__setattr__``, skips ``__post_init__``)."""
    if isinstance(latent, EDICTLatent):
        check_pair("x", latent.x, "y", latent.y)
        check_steps(latent.steps)
        check_p(latent.p, len(latent.steps))
    else:
        check_pair("x_T", latent.x_T, "x_next", latent.x_next)
        check_steps(latent.steps)
        check_gamma(latent.gamma, len(latent.steps), allow_zero=True)
    if not isinstance(latent.dtype, torch.dtype) or not latent.dtype.is_floating_point:
        raise ArgumentTypeError(f"dtype must be a floating-point torch.dtype, got {latent.dtype!r}")


def check_p(p: object, num_steps: int) -> float:
    """EDICT's p: in (0, 1] with p^(-2N) <= ``MAX_AMPLIFICATION`` for N steps.

    The mixing layers shrink the difference of the two chains by p^2 a step (y' - x' = p^2 (y^i - x^i)), so the
    inverse grows it, and the rounding in it, by 1/p^2 a step; the bound keeps the float64 round trip within
    ~1e-6 of the data's scale. p = 1 (no mixing) holds for every N.
    """
    value = check_real("p", p, 0.0, 1.0, open_minimum=True)
    return check_amplification("p", value, 2 * num_steps, num_steps)


def check_gamma(gamma: object, num_steps: int, *, allow_zero: bool) -> float:
    """BDIA's gamma: 0 (sampling only: plain DDIM, not invertible, if ``allow_zero``) or in (0, 1] with
    gamma^-(N - 1) <= ``MAX_AMPLIFICATION``: each of the N - 1 inverse BDIA steps divides by gamma."""
    value = check_real("gamma", gamma, 0.0, 1.0, open_minimum=not allow_zero)
    return value if value == 0.0 else check_amplification("gamma", value, num_steps - 1, num_steps)


def check_amplification(name: str, value: float, power: int, num_steps: int) -> float:
    """``value`` unless value^-power (the inverse's growth of rounding) exceeds ``MAX_AMPLIFICATION``."""
    if -power * math.log(value) <= math.log(MAX_AMPLIFICATION):
        return value
    minimum = math.ceil(MAX_AMPLIFICATION ** (-1 / power) * 1e4) / 1e4
    raise ArgumentValueError(
        f"{name}={value!r} is out of range for {num_steps} steps; allowed values are in [{minimum:g}, 1]: "
        f"the inverse grows rounding by {name}^-{power} = 10^{-power * math.log10(value):.3g} (at most "
        f"{MAX_AMPLIFICATION:g}), "
        "which would lose the round trip; use a larger value or fewer steps"
    )


def check_pair(name_a: str, a: object, name_b: str, b: object) -> None:
    """Both tensors of a floating dtype and of one shape."""
    first, second = check_floating(name_a, a), check_floating(name_b, b)
    if first.shape != second.shape:
        raise ArgumentValueError(
            f"{name_a} shape {tuple(first.shape)} and {name_b} shape {tuple(second.shape)} must be equal"
        )


def check_steps(steps: object) -> None:
    if not isinstance(steps, tuple) or not steps or not all(isinstance(step, GridStep) for step in steps):
        raise ArgumentTypeError(f"steps must be a non-empty tuple of GridStep, got {steps!r}")


# ----------------------------------------------------------------------------- EDICT
def edict_step(
    denoiser: Denoiser, x: torch.Tensor, y: torch.Tensor, step: GridStep, p: float
) -> tuple[torch.Tensor, ...]:
    """One EDICT denoising step (Wallace, Gokul & Naik, eq. 14: two coupled DDIM updates, then the mixing layers)::

    x^i = a x + b eps(y),   y^i = a y + b eps(x^i),   x' = p x^i + (1 - p) y^i,   y' = p y^i + (1 - p) x'
    """
    move = ddim_transfer(step.alpha, step.alpha_to)
    x_inter = move.a * x + move.noise(denoiser(y, step))
    y_inter = move.a * y + move.noise(denoiser(x_inter, step))
    x_new = p * x_inter + (1 - p) * y_inter
    return x_new, p * y_inter + (1 - p) * x_new


def edict_inverse_step(
    denoiser: Denoiser, x: torch.Tensor, y: torch.Tensor, step: GridStep, p: float
) -> tuple[torch.Tensor, ...]:
    """The exact inverse of :func:`edict_step` (each line of eq. 14 solved, in reverse order)::

    y^i = (y' - (1 - p) x') / p,  x^i = (x' - (1 - p) y^i) / p,  y = (y^i - b eps(x^i)) / a,  x = (x^i - b eps(y)) / a
    """
    move = ddim_transfer(step.alpha, step.alpha_to)
    y_inter = (y - (1 - p) * x) / p
    x_inter = (x - (1 - p) * y_inter) / p
    y_start = (y_inter - move.noise(denoiser(x_inter, step))) / move.a
    return (x_inter - move.noise(denoiser(y_start, step))) / move.a, y_start


def edict_invert(
    denoiser: Denoiser, sample: torch.Tensor, steps: tuple[GridStep, ...], p: float, progress: bool | None
) -> EDICTLatent:
    """x = y = x_0, then :func:`edict_inverse_step` for each step in reverse order (2 model calls a step)."""
    denoiser = denoiser.with_dtype(sample.dtype)
    x = y = sample.to(state_dtype(sample))
    for step in progress_iter(list(reversed(steps)), progress, "EDICT inversion"):
        x, y = edict_inverse_step(denoiser, x, y, step, p)
    return EDICTLatent(x, y, steps, p, sample.dtype)


def edict_sample(denoiser: Denoiser, latent: EDICTLatent, progress: bool | None) -> torch.Tensor:
    """:func:`edict_step` along the latent's steps; returns the x chain (the y chain ends next to it)."""
    denoiser = denoiser.with_dtype(latent.dtype)
    x, y = latent.x.to(state_dtype(latent.x)), latent.y.to(state_dtype(latent.x))
    for step in progress_iter(latent.steps, progress, "EDICT sampling"):
        x, y = edict_step(denoiser, x, y, step, latent.p)
    return x.to(latent.dtype)


# ----------------------------------------------------------------------------- BDIA
def bdia_coefficients(step: GridStep, previous: GridStep, gamma: float) -> Transfer:
    """(c_x, c_eps) of the BDIA-DDIM update z_{k+1} = gamma z_{k-1} + c_x z_k + c_eps eps(z_k) at step k >= 1.

    z_k is the model's input at t_k. BDIA-DDIM (Zhang, Lewis & Kleijn, arXiv 2307.10829, as in the
    authors' code), with indices counting down to the data::

        z_{i-1} = z_{i+1} - (1 - gamma)(z_{i+1} - z_i) - gamma D(t_i -> t_{i+1} | z_i) + D(t_i -> t_{i-1} | z_i)

    D is the DDIM increment T(z, eps) - z. Here the backward increment goes from abar_k back to abar_{k-1}
    (where the model read z_{k-1}), the forward one to abar'_k; collected, c_x = a_f - gamma a_b and
    c_eps = b_f - gamma b_b (each part of b likewise under CFG++), as a :class:`Transfer` (a = c_x, b = c_eps).
    gamma = 0 is the DDIM step.
    """
    forward = ddim_transfer(step.alpha, step.alpha_to)
    backward = ddim_transfer(step.alpha, previous.alpha)
    return Transfer(
        forward.a - gamma * backward.a,
        forward.b - gamma * backward.b,
        forward.b_x0 - gamma * backward.b_x0,
        forward.b_dir - gamma * backward.b_dir,
    )


def bdia_invert(
    denoiser: Denoiser,
    sample: torch.Tensor,
    steps: tuple[GridStep, ...],
    gamma: float,
    iterations: int,
    progress: bool | None,
) -> BDIALatent:
    """z_N = x_0; z_{N-1} by the (approximate) DDIM inverse of the last step, then for k = N-1 ... 1 the
    exact inverse z_{k-1} = (z_{k+1} - c_x z_k - c_eps eps(z_k)) / gamma (N model calls, plus ``iterations``)."""
    denoiser = denoiser.with_dtype(sample.dtype)
    later = sample.to(state_dtype(sample))
    current = ddim_inverse_step(denoiser, later, steps[-1], iterations)
    for k in progress_iter(range(len(steps) - 1, 0, -1), progress, "BDIA inversion"):
        c = bdia_coefficients(steps[k], steps[k - 1], gamma)
        later, current = current, (later - (c.a * current + c.noise(denoiser(current, steps[k])))) / gamma
    return BDIALatent(current, later, steps, gamma, sample.dtype)


def bdia_sample(denoiser: Denoiser, latent: BDIALatent, progress: bool | None) -> torch.Tensor:
    """z_{k+1} = gamma z_{k-1} + c_x z_k + c_eps eps(z_k) for k = 1 ... N-1, from (z_0, z_1) = the latent."""
    denoiser = denoiser.with_dtype(latent.dtype)
    work = state_dtype(latent.x_T)
    earlier, current = latent.x_T.to(work), latent.x_next.to(work)
    steps = latent.steps
    for k in progress_iter(range(1, len(steps)), progress, "BDIA sampling"):
        c = bdia_coefficients(steps[k], steps[k - 1], latent.gamma)
        earlier, current = current, latent.gamma * earlier + (c.a * current + c.noise(denoiser(current, steps[k])))
    return current.to(latent.dtype)


# ----------------------------------------------------------------------------- sampling
def sample_exact(
    model: Model,
    scheduler: DDIMSchedulerLike,
    start: EDICTLatent | BDIALatent | torch.Tensor,
    *,
    method: str | None = None,
    num_inference_steps: int | None = None,
    timesteps: Timesteps = None,
    p: float | None = None,
    gamma: float | None = None,
    progress: bool | None = False,
    **short_form: Unpack[ClassifierFreeKeywords],
) -> torch.Tensor:
    """Sample x_0 with EDICT's or BDIA's invertible updates, from a latent of ``ddim.invert`` or from noise.

    Args:
        model: the model, or a guidance wrapper (``ddim.guidance.ClassifierFreeGuidance``).
        start: an :class:`EDICTLatent` / :class:`BDIALatent` (its method, steps and p / gamma are used:
            leave ``method``, ``num_inference_steps``, ``timesteps``, ``p`` and ``gamma`` unset); or a
            tensor x_T, with ``method`` "edict" (both chains start at x_T) or "bdia" (the first step is
            the DDIM step), the grid ``num_inference_steps`` (default 50) or ``timesteps``, and ``p``
            (default 0.93) or ``gamma`` (default 1; 0 is plain DDIM).
        short_form: ``guidance_scale`` / ``unconditional_model`` / ``guidance_rescale``: classifier-free
            guidance, the short form of the wrapper, as in ``ddim.sample``.
        progress: a tqdm bar over the steps (if tqdm is installed).

    Sampling a latent with the guidance it was inverted with returns the inverted x_0 up to rounding.
    ``clip_sample`` and ``thresholding`` are not applied (the updates are not the scheduler's step).
    """
    denoiser = make_denoiser(model, scheduler, short_form, "sample_exact")
    if isinstance(start, (EDICTLatent, BDIALatent)):
        given = {"method": method, "num_inference_steps": num_inference_steps, "timesteps": timesteps, "p": p}
        given["gamma"] = gamma
        extra = [name for name, value in given.items() if value is not None]
        if extra:
            raise ArgumentValueError(
                f"{', '.join(extra)} must be left unset when start is a {type(start).__name__}: the latent "
                "fixes the method, the grid and its parameter"
            )
        check_latent(start)
        latent = start
    elif isinstance(start, torch.Tensor):
        latent = latent_from_noise(denoiser, scheduler, start, method, num_inference_steps, timesteps, p, gamma)
    else:
        raise ArgumentTypeError(
            f"start must be an EDICTLatent, a BDIALatent or a tensor x_T, got {type(start).__name__}"
        )
    with torch.no_grad():
        if isinstance(latent, EDICTLatent):
            return edict_sample(denoiser, latent, progress)
        return bdia_sample(denoiser, latent, progress)


def latent_from_noise(
    denoiser: Denoiser,
    scheduler: DDIMSchedulerLike,
    noise: torch.Tensor,
    method: str | None,
    num_inference_steps: int | None,
    timesteps: Timesteps,
    p: float | None,
    gamma: float | None,
) -> EDICTLatent | BDIALatent:
    """The latent that sampling from fresh noise x_T starts at (BDIA: after one DDIM step, one model call)."""
    if method is None:
        raise ArgumentValueError("method must be 'edict' or 'bdia' when start is a tensor x_T; got method=None")
    check_str_choice("method", method, EXACT_METHODS)
    check_floating("start", noise)
    if (method == "edict" and gamma is not None) or (method == "bdia" and p is not None):
        raise ArgumentValueError(f"method={method!r} does not take {'gamma' if method == 'edict' else 'p'}")
    if num_inference_steps is None and timesteps is None:
        num_inference_steps = 50
    steps = grid_steps(scheduler, num_inference_steps, timesteps)
    check_exact_grid(steps)
    x_T = noise.to(state_dtype(noise))
    if method == "edict":
        return EDICTLatent(x_T, x_T, steps, EDICT_P if p is None else p, noise.dtype)
    with torch.no_grad():
        move = ddim_transfer(steps[0].alpha, steps[0].alpha_to)
        x_next = move.a * x_T + move.noise(denoiser.with_dtype(noise.dtype)(x_T, steps[0]))
    return BDIALatent(x_T, x_next, steps, BDIA_GAMMA if gamma is None else gamma, noise.dtype)
