"""DDIM as a k-diffusion sampler: the function ComfyUI and A1111 call, over a sigma array.

k-diffusion's convention (Karras et al., arXiv 2206.00364): the state is x = x0 + sigma eps, with
sigma = sqrt((1 - abar) / abar) (so x = x_t / sqrt(abar)), and ``model(x, sigma, **extra_args)`` returns the
denoised x0. DDIM's step (DDIM paper, eq. 12, with sigma_t of eq. 16) from sigma to sigma' in that form::

    eps        = (x - x0) / sigma                                     # eq. 9 solved for eps
    sigma_up   = eta sqrt(sigma'^2 (sigma^2 - sigma'^2) / sigma^2)     # eq. 16's sigma_t / sqrt(abar')
    sigma_down = sqrt(sigma'^2 - sigma_up^2)                           # eq. 12's direction / sqrt(abar')
    x'         = x0 + sigma_down eps + sigma_up z

(at eta = 0 this is the Euler step of the probability-flow ODE; the last step to sigma' = 0 returns x0).
:class:`Denoiser` turns a diffusers-style model (epsilon, v or x0 prediction, ``model(x_t, t)``) and a
scheduler into the denoiser this interface calls, and :class:`DiffusersModel` the other way;
:func:`scheduler_sigmas` gives the sigmas of a scheduler's grid, on which :func:`sample_ddim` equals
``ddim.sample``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import torch

from ddim.model import Model
from ddim.prediction import model_output_from, prediction_coefficients
from ddim.progress import progress_iter
from ddim.scheduler_protocol import DDIMSchedulerLike
from ddim.tensor_checks import check_floating
from ddim.validation import ArgumentTypeError, ArgumentValueError, check_real

#: ``denoiser(x, sigma, **extra_args) -> x0``, sigma of shape (batch,).
KDenoiser = Callable[..., torch.Tensor]
#: ``noise_sampler(sigma, sigma_next) -> z``, a standard normal tensor shaped like x.
NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def sigma_of(alpha_bar: torch.Tensor | float) -> torch.Tensor:
    """sigma = sqrt((1 - abar) / abar), float64 (infinite at abar = 0: zero terminal SNR has no sigma form)."""
    alpha = torch.as_tensor(alpha_bar, dtype=torch.float64)
    return ((1 - alpha) / alpha).sqrt()


def scheduler_sigmas(scheduler: DDIMSchedulerLike) -> torch.Tensor:
    """The sigmas of the scheduler's current grid (after ``set_timesteps``), then the final landing's (0 when the
    final alpha is 1), float64: the array :func:`sample_ddim` walks to equal ``ddim.sample`` on that grid.

    Every step must land on the next grid point (``prev_timestep_from_grid=True``, a custom grid, or a
    ``leading`` grid with T divisible by N), since a sigma array cannot say that a step lands elsewhere;
    a grid point at zero SNR (infinite sigma) is refused too.
    """
    steps = scheduler.plan.grid_steps()
    for step, following in itertools.pairwise(steps):
        if step.alpha_to != following.alpha:
            raise ArgumentValueError(
                f"the step from timestep {step.timestep} lands off the grid (before {following.timestep}); a sigma "
                "array cannot express that: use prev_timestep_from_grid=True or a custom grid"
            )
    alphas = [step.alpha for step in steps] + [steps[-1].alpha_to]
    if min(alphas) <= 0.0:
        raise ArgumentValueError("the grid reaches zero SNR (abar = 0, infinite sigma); drop that timestep")
    return sigma_of(torch.tensor(alphas, dtype=torch.float64))


class Denoiser:
    """k-diffusion's denoiser of a diffusers-style model: ``denoiser(x, sigma) = x0``.

    sigma is matched to the training timestep of nearest log-sigma (each grid sigma of
    :func:`scheduler_sigmas` is exactly one); x_t = x / sqrt(1 + sigma_t^2) is what the model reads, and
    its output is turned into x0 by its prediction type (DDIM paper, eq. 9).
    """

    def __init__(self, model: Model, scheduler: DDIMSchedulerLike) -> None:
        if not callable(model):
            raise ArgumentTypeError(f"model must be callable, got {type(model).__name__}")
        self.model = model
        self.prediction_type = scheduler.config.prediction_type
        self.alphas = scheduler.alphas_cumprod.detach().double().cpu()
        self.log_sigmas = sigma_of(self.alphas).log()
        # (one sigma for all rows, batch size, sample ndim) -> (t, abar_t shaped to broadcast)
        self.seen: dict[tuple[float, int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def timesteps(self, sigma: torch.Tensor) -> torch.Tensor:
        """The training timestep of nearest log-sigma for each sigma (int64)."""
        distance = (sigma.detach().double().cpu().log().reshape(-1, 1) - self.log_sigmas.reshape(1, -1)).abs()
        return distance.nan_to_num(nan=math.inf).argmin(dim=1)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float, **extra_args: Any) -> torch.Tensor:
        rows = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        first = float(rows[0])
        uniform = bool((rows == first).all())  # the samplers pass one sigma for every row
        key = (first, x.shape[0], x.ndim)
        cached = self.seen.get(key) if uniform else None
        if cached is None:
            t = self.timesteps(rows)
            cached = (t, self.alphas[t].reshape(-1, *([1] * (x.ndim - 1))))
            if uniform:
                self.seen[key] = cached
        t, alpha = cached
        x_t = x * alpha.sqrt().to(device=x.device, dtype=x.dtype)
        output = self.model(x_t, t.to(x.device), **extra_args)
        x0_x, x0_m, _, _ = prediction_coefficients(alpha.to(x.device), self.prediction_type)
        return (x0_x * x_t + x0_m * output).to(x.dtype)


class DiffusersModel:
    """A diffusers-style model ``model(x_t, t)`` of the scheduler's prediction type from a k-diffusion denoiser."""

    def __init__(self, denoiser: KDenoiser, scheduler: DDIMSchedulerLike) -> None:
        self.denoiser = denoiser
        self.prediction_type = scheduler.config.prediction_type
        self.alphas = scheduler.alphas_cumprod.detach().double().cpu()

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, **extra_args: Any) -> torch.Tensor:
        alpha = self.alphas[torch.as_tensor(t).reshape(-1).cpu().long()].expand(x_t.shape[0])
        sigma = sigma_of(alpha).to(x_t.device)
        shape = (-1, *([1] * (x_t.ndim - 1)))
        x = x_t / alpha.sqrt().to(x_t.device).reshape(shape)
        x0 = self.denoiser(x.to(x_t.dtype), sigma.to(x_t.dtype), **extra_args).double()
        eps = (x - x0) / sigma.reshape(shape)
        return model_output_from(x_t.double(), eps, alpha.to(x_t.device).reshape(shape), self.prediction_type).to(
            x_t.dtype
        )


@torch.no_grad()
def sample_ddim(
    model: KDenoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    disable: bool | None = None,
    eta: float = 0.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """DDIM over ``sigmas`` (descending, usually ending in 0) from ``x`` = x_T scaled to sigma_0 (module doc).

    k-diffusion's signature and callback dict (``x``, ``i``, ``sigma``, ``sigma_hat``, ``denoised``); ``eta`` in
    [0, 1] (eq. 16); ``s_noise`` scales the added noise; ``noise_sampler(sigma, sigma_next)`` gives z (default
    ``torch.randn_like``); ``disable`` turns the progress bar off (``None``: only on a terminal).
    """
    check_floating("x", x)
    eta = check_real("eta", eta, 0.0, 1.0)
    s_noise = check_real("s_noise", s_noise, 0.0)
    if not isinstance(sigmas, torch.Tensor) or sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ArgumentValueError("sigmas must be a 1-D tensor of at least 2 sigmas (the last usually 0)")
    values = sigmas.detach().double().cpu()
    if not bool((values[1:] < values[:-1]).all()) or bool((values < 0).any()) or not bool(values.isfinite().all()):
        raise ArgumentValueError(f"sigmas must be finite, >= 0 and strictly decreasing, got {values.tolist()!r:.120}")
    extra = extra_args or {}
    draw = noise_sampler if noise_sampler is not None else (lambda _sigma, _next: torch.randn_like(x))
    ones = x.new_ones((x.shape[0],))
    for i in progress_iter(range(len(values) - 1), None if disable is None else not disable, "DDIM"):
        sigma, sigma_next = float(values[i]), float(values[i + 1])
        denoised = model(x, sigmas[i] * ones, **extra)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        if sigma_next == 0.0:
            x = denoised
            continue
        sigma_up = eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)
        sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
        x = denoised + sigma_down * ((x - denoised) / sigma)
        if sigma_up > 0:
            x = x + draw(sigmas[i], sigmas[i + 1]) * (s_noise * sigma_up)
    return x
