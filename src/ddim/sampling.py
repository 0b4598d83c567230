"""``ddim.sample``: the whole DDIM sampling loop, with guidance, inpainting and trajectories.

The loop is x_T ~ N(0, I), then for each grid timestep t (descending)::

    m    = model(x_t, t)                                        # prediction of config.prediction_type
    m    = m_u + s (m - m_u)                                    # classifier-free guidance (arXiv 2207.12598)
    m    = rescale_noise_cfg(m, m_cond, guidance_rescale)       # arXiv 2305.08891, sec. 3.4
    eps  = eps - sqrt(1 - abar_t) * w * grad log p(y | x_t)     # classifier guidance (arXiv 2105.05233, alg. 2)
    x_prev, x0 = scheduler.step(m, t, x_t, eta)                 # DDIM paper, eqs. 12 and 16
    x_prev = k * q(x_prev | known) + (1 - k) * x_prev           # known-region replacement (inpainting)

The per-step arithmetic is the scheduler's; this module only orchestrates it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, overload

import numpy as np
import torch

from ddim.guidance import check_guidance, guided_output
from ddim.inpainting import check_known, replace_known
from ddim.model import Model, NonFiniteOutputError, check_output
from ddim.noise import Generator, randn_like_diffusers
from ddim.prediction import prediction_coefficients
from ddim.progress import progress_iter
from ddim.stepping import DDIMStepping
from ddim.validation import ArgumentTypeError, ArgumentValueError, check_bool, is_int

__all__ = ["Model", "NonFiniteOutputError", "SamplingOutput", "sample"]

#: ``classifier_gradient(x_t, t) -> grad_{x_t} log p(y | x_t)``, same shape as x_t.
GradientFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``callback(step_index, timestep, x_prev, x0_prediction)``, called after every step.
StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


@dataclass
class SamplingOutput:
    """What :func:`sample` returns when extra outputs are requested.

    Attributes:
        samples: the final x_0.
        intermediates: x_T followed by every step's x_prev (``return_intermediates=True``), else empty.
        x0_predictions: each step's predicted x_0 (``return_x0_predictions=True``), else empty.
        timesteps: the grid that was walked, descending.
    """

    samples: torch.Tensor
    intermediates: list[torch.Tensor] = field(default_factory=list)
    x0_predictions: list[torch.Tensor] = field(default_factory=list)
    timesteps: list[int] = field(default_factory=list)


@overload
def sample(
    model: Model,
    scheduler: DDIMStepping,
    shape: Sequence[int] | None = ...,
    *,
    noise: torch.Tensor | None = ...,
    num_inference_steps: int | None = ...,
    timesteps: Sequence[int] | np.ndarray | torch.Tensor | None = ...,
    eta: float = ...,
    generator: Generator = ...,
    device: str | torch.device | None = ...,
    dtype: torch.dtype = ...,
    progress: bool = ...,
    guidance_scale: float = ...,
    unconditional_model: Model | None = ...,
    guidance_rescale: float = ...,
    classifier_gradient: GradientFn | None = ...,
    classifier_scale: float = ...,
    known: torch.Tensor | None = ...,
    known_mask: torch.Tensor | None = ...,
    callback: StepCallback | None = ...,
    return_intermediates: Literal[False] = ...,
    return_x0_predictions: Literal[False] = ...,
    check_finite: bool = ...,
    use_clipped_model_output: bool = ...,
    differentiable: bool = ...,
) -> torch.Tensor: ...


@overload
def sample(
    model: Model,
    scheduler: DDIMStepping,
    shape: Sequence[int] | None = ...,
    *,
    noise: torch.Tensor | None = ...,
    num_inference_steps: int | None = ...,
    timesteps: Sequence[int] | np.ndarray | torch.Tensor | None = ...,
    eta: float = ...,
    generator: Generator = ...,
    device: str | torch.device | None = ...,
    dtype: torch.dtype = ...,
    progress: bool = ...,
    guidance_scale: float = ...,
    unconditional_model: Model | None = ...,
    guidance_rescale: float = ...,
    classifier_gradient: GradientFn | None = ...,
    classifier_scale: float = ...,
    known: torch.Tensor | None = ...,
    known_mask: torch.Tensor | None = ...,
    callback: StepCallback | None = ...,
    return_intermediates: Literal[True],
    return_x0_predictions: bool = ...,
    check_finite: bool = ...,
    use_clipped_model_output: bool = ...,
    differentiable: bool = ...,
) -> SamplingOutput: ...


@overload
def sample(
    model: Model,
    scheduler: DDIMStepping,
    shape: Sequence[int] | None = ...,
    *,
    noise: torch.Tensor | None = ...,
    num_inference_steps: int | None = ...,
    timesteps: Sequence[int] | np.ndarray | torch.Tensor | None = ...,
    eta: float = ...,
    generator: Generator = ...,
    device: str | torch.device | None = ...,
    dtype: torch.dtype = ...,
    progress: bool = ...,
    guidance_scale: float = ...,
    unconditional_model: Model | None = ...,
    guidance_rescale: float = ...,
    classifier_gradient: GradientFn | None = ...,
    classifier_scale: float = ...,
    known: torch.Tensor | None = ...,
    known_mask: torch.Tensor | None = ...,
    callback: StepCallback | None = ...,
    return_intermediates: bool = ...,
    return_x0_predictions: Literal[True],
    check_finite: bool = ...,
    use_clipped_model_output: bool = ...,
    differentiable: bool = ...,
) -> SamplingOutput: ...


@overload
def sample(
    model: Model,
    scheduler: DDIMStepping,
    shape: Sequence[int] | None = ...,
    *,
    noise: torch.Tensor | None = ...,
    num_inference_steps: int | None = ...,
    timesteps: Sequence[int] | np.ndarray | torch.Tensor | None = ...,
    eta: float = ...,
    generator: Generator = ...,
    device: str | torch.device | None = ...,
    dtype: torch.dtype = ...,
    progress: bool = ...,
    guidance_scale: float = ...,
    unconditional_model: Model | None = ...,
    guidance_rescale: float = ...,
    classifier_gradient: GradientFn | None = ...,
    classifier_scale: float = ...,
    known: torch.Tensor | None = ...,
    known_mask: torch.Tensor | None = ...,
    callback: StepCallback | None = ...,
    return_intermediates: bool = ...,
    return_x0_predictions: bool = ...,
    check_finite: bool = ...,
    use_clipped_model_output: bool = ...,
    differentiable: bool = ...,
) -> torch.Tensor | SamplingOutput: ...


def sample(
    model: Model,
    scheduler: DDIMStepping,
    shape: Sequence[int] | None = None,
    *,
    noise: torch.Tensor | None = None,
    num_inference_steps: int | None = 50,
    timesteps: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    eta: float = 0.0,
    generator: Generator = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    guidance_scale: float = 1.0,
    unconditional_model: Model | None = None,
    guidance_rescale: float = 0.0,
    classifier_gradient: GradientFn | None = None,
    classifier_scale: float = 1.0,
    known: torch.Tensor | None = None,
    known_mask: torch.Tensor | None = None,
    callback: StepCallback | None = None,
    return_intermediates: bool = False,
    return_x0_predictions: bool = False,
    check_finite: bool = False,
    use_clipped_model_output: bool = False,
    differentiable: bool = False,
) -> torch.Tensor | SamplingOutput:
    """Draw samples with DDIM (DDIM paper, Algorithm in sec. 4.1: eq. 12 applied along the grid).

    Args:
        model: ``model(x_t, t)`` with t a 1-D int64 tensor (one timestep per row, on x_t's device),
            returning the prediction of ``scheduler.config.prediction_type`` (epsilon, sample or v).
        scheduler: a ``ddim.DDIMScheduler``; its ``set_timesteps`` is called (its state changes).
        shape: shape of the samples, batch first; or give ``noise`` (x_T itself) instead.
        num_inference_steps / timesteps: the number of steps on the configured spacing, or a custom
            strictly decreasing grid (which takes precedence; ``num_inference_steps`` is then unused).
        eta: 0 is deterministic DDIM, 1 is DDPM-like (DDIM paper, eq. 16).
        generator: None, a ``torch.Generator``, or one per batch row; with a list, row i's x_T and
            every step noise come from generator i only (a sample depends on its seed, not its batch).
        guidance_scale / unconditional_model / guidance_rescale: classifier-free guidance
            m = m_u + s (m_c - m_u), then ``rescale_noise_cfg``; ``unconditional_model`` is needed
            whenever s != 1 or guidance_rescale > 0.
        classifier_gradient / classifier_scale: classifier guidance; ``classifier_gradient(x_t, t)``
            returns grad log p(y | x_t) (called with autograd enabled) and eps is shifted by
            -sqrt(1 - abar_t) * classifier_scale * gradient.
        known / known_mask: inpainting; where ``known_mask`` is 1 the sample is replaced after every
            step by ``known`` noised to the step's landing timestep (q(x_s | x_0), eq. 4), and by
            ``known`` itself at the end. Both must broadcast to the sample shape.
        callback: called after every step as ``callback(i, t, x_prev, x0_pred)``.
        return_intermediates / return_x0_predictions: also return the trajectory of x_t / of the
            predicted x_0; a :class:`SamplingOutput` is then returned instead of the tensor.
        check_finite: raise :class:`NonFiniteOutputError` naming the step at the first non-finite model output.
        differentiable: run the loop with autograd recording (default: under ``torch.no_grad``), so a loss
            on the samples backpropagates into the model's parameters and ``noise`` (reward
            backpropagation, null-text-style optimisation); the numbers are the same.
        progress: show a tqdm bar (if tqdm is installed).

    Returns:
        The final samples (a tensor), or a :class:`SamplingOutput` when extra outputs are requested.
    """
    x = _initial_noise(shape, noise, generator, device, dtype)
    check_guidance(guidance_scale, unconditional_model, guidance_rescale, classifier_scale)
    check_bool("differentiable", differentiable)
    mask = check_known(known, known_mask, x)
    if timesteps is not None:
        scheduler.set_timesteps(timesteps=timesteps)
    else:
        scheduler.set_timesteps(num_inference_steps)
    grid = [int(t) for t in scheduler.timesteps.tolist()]
    output = SamplingOutput(samples=x, timesteps=grid)
    if return_intermediates:
        output.intermediates.append(x)
    prediction_type = scheduler.config.prediction_type
    with torch.enable_grad() if differentiable else torch.no_grad():
        for index, t in enumerate(progress_iter(grid, progress, "DDIM sampling")):
            t_batch = torch.full((x.shape[0],), t, dtype=torch.int64, device=x.device)
            model_output = guided_output(
                model, unconditional_model, x, t_batch, t, guidance_scale, guidance_rescale, check_finite, index
            )
            if classifier_gradient is not None:
                alpha = float(scheduler.alphas_cumprod[t])
                with torch.enable_grad():
                    gradient = classifier_gradient(x.detach(), t_batch)
                check_output("classifier_gradient", gradient, x, index, t, check_finite)
                # eps moves by -sqrt(1 - abar) w g at fixed x_t, i.e. the output m by that over d eps / d m.
                eps_m = prediction_coefficients(alpha, prediction_type)[3]
                shift = -math.sqrt(1 - alpha) * classifier_scale / eps_m
                model_output = model_output + shift * gradient.to(model_output.dtype)
            x, x0 = scheduler.step(
                model_output,
                t,
                x,
                eta=eta,
                use_clipped_model_output=use_clipped_model_output,
                generator=generator if eta > 0 else None,
                return_dict=False,
            )
            if mask is not None and known is not None:
                landing = -2 if index == len(grid) - 1 else scheduler.previous_timestep(t)
                x = replace_known(scheduler, x, known, mask, landing, generator)
            if return_intermediates:
                output.intermediates.append(x)
            if return_x0_predictions:
                output.x0_predictions.append(x0)
            if callback is not None:
                callback(index, t, x, x0)
    output.samples = x
    if return_intermediates or return_x0_predictions:
        return output
    return x


def _initial_noise(
    shape: Sequence[int] | None,
    noise: torch.Tensor | None,
    generator: Generator,
    device: str | torch.device | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """x_T: ``noise`` as given (moved to ``device``), or drawn as diffusers' ``randn_tensor`` draws it."""
    if noise is not None:
        if not isinstance(noise, torch.Tensor):
            raise ArgumentTypeError(f"noise must be a tensor, got {type(noise).__name__}")
        if shape is not None and tuple(shape) != tuple(noise.shape):
            raise ArgumentValueError(
                f"shape={tuple(shape)} disagrees with noise.shape={tuple(noise.shape)}; pass one of them"
            )
        return noise.to(device=device if device is not None else noise.device)
    if shape is None:
        raise ArgumentValueError("sample() needs shape or noise (the initial x_T); both are None")
    dims = tuple(shape)
    if not dims or not all(is_int(d) and d > 0 for d in dims):
        raise ArgumentValueError(f"shape={shape!r} must be a non-empty sequence of positive ints, batch first")
    return randn_like_diffusers(dims, generator=generator, device=device, dtype=dtype)
