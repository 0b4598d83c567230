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
from typing import Any

import numpy as np
import torch

from ddim.guidance import rescale_noise_cfg
from ddim.noise import Generator, randn_like_diffusers
from ddim.scheduler import DDIMStepping

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``classifier_gradient(x_t, t) -> grad_{x_t} log p(y | x_t)``, same shape as x_t.
GradientFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``callback(step_index, timestep, x_prev, x0_prediction)``, called after every step.
StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]
#: The schedulers :func:`sample` drives: ``ddim.DDIMScheduler`` and ``ddim.diffusers.DDIMScheduler``.
SamplingScheduler = DDIMStepping


class NonFiniteOutputError(FloatingPointError, ValueError):
    """A model output held NaN or Inf (raised by :func:`sample` with ``check_finite=True``)."""


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
) -> Any:
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
        progress: show a tqdm bar (if tqdm is installed).

    Returns:
        The final samples (a tensor), or a :class:`SamplingOutput` when extra outputs are requested.
    """
    x = _initial_noise(shape, noise, generator, device, dtype)
    _check_guidance(guidance_scale, unconditional_model, guidance_rescale, classifier_scale)
    mask = _check_known(known, known_mask, x)
    if timesteps is not None:
        scheduler.set_timesteps(timesteps=timesteps)
    else:
        scheduler.set_timesteps(num_inference_steps)
    grid = [int(t) for t in scheduler.timesteps.tolist()]
    output = SamplingOutput(samples=x, timesteps=grid)
    if return_intermediates:
        output.intermediates.append(x)
    prediction_type = scheduler.config.prediction_type
    with torch.no_grad():
        for index, t in enumerate(progress_steps(grid, progress)):
            t_batch = torch.full((x.shape[0],), t, dtype=torch.int64, device=x.device)
            model_output = _guided_output(
                model, unconditional_model, x, t_batch, guidance_scale, guidance_rescale, check_finite, index
            )
            if classifier_gradient is not None:
                alpha = float(scheduler.alphas_cumprod[t])
                with torch.enable_grad():
                    gradient = classifier_gradient(x.detach(), t_batch)
                _check_output("classifier_gradient", gradient, x, index, t, check_finite)
                # eps moves by -sqrt(1 - abar) w g at fixed x_t, i.e. the output m by that over d eps / d m.
                shift = -math.sqrt(1 - alpha) * classifier_scale / epsilon_coefficients(alpha, prediction_type)[1]
                model_output = model_output + shift * gradient.to(model_output.dtype)
            step = scheduler.step(
                model_output,
                t,
                x,
                eta=eta,
                use_clipped_model_output=use_clipped_model_output,
                generator=generator if eta > 0 else None,
            )
            x, x0 = step.prev_sample, step.pred_original_sample
            if mask is not None and known is not None:
                landing = -2 if index == len(grid) - 1 else scheduler.previous_timestep(t)
                x = _replace_known(scheduler, x, known, mask, landing, generator)
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


def epsilon_coefficients(alpha: float, prediction_type: str) -> tuple[float, float]:
    """(c_x, c_m) with eps = c_x x_t + c_m m for a model output m at abar = ``alpha`` (see :mod:`ddim.coefficients`).

    epsilon: (0, 1); sample: (1/sqrt(1-a), -sqrt(a)/sqrt(1-a)); v_prediction: (sqrt(1-a), sqrt(a)).
    """
    if prediction_type == "epsilon":
        return 0.0, 1.0
    if prediction_type == "sample":
        return 1 / math.sqrt(1 - alpha), -math.sqrt(alpha) / math.sqrt(1 - alpha)
    if prediction_type == "v_prediction":
        return math.sqrt(1 - alpha), math.sqrt(alpha)
    raise ValueError(
        f"prediction_type={prediction_type!r} is not supported; "
        "allowed values are ['epsilon', 'sample', 'v_prediction']"
    )


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
            raise TypeError(f"noise must be a tensor, got {type(noise).__name__}")
        if shape is not None and tuple(shape) != tuple(noise.shape):
            raise ValueError(f"shape={tuple(shape)} disagrees with noise.shape={tuple(noise.shape)}; pass one of them")
        return noise.to(device=device if device is not None else noise.device)
    if shape is None:
        raise ValueError("sample() needs shape or noise (the initial x_T); both are None")
    dims = tuple(shape)
    if not dims or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in dims):
        raise ValueError(f"shape={shape!r} must be a non-empty sequence of positive ints, batch first")
    return randn_like_diffusers(dims, generator=generator, device=device, dtype=dtype)


def _check_guidance(
    guidance_scale: float, unconditional_model: Model | None, guidance_rescale: float, classifier_scale: float
) -> None:
    for name, value in (
        ("guidance_scale", guidance_scale),
        ("guidance_rescale", guidance_rescale),
        ("classifier_scale", classifier_scale),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TypeError(f"{name} must be a finite real number, got {value!r}")
    if unconditional_model is None and (guidance_scale != 1.0 or guidance_rescale != 0.0):
        raise ValueError(
            f"guidance_scale={guidance_scale!r} / guidance_rescale={guidance_rescale!r} need an unconditional "
            "branch: pass unconditional_model (or leave guidance_scale=1.0 and guidance_rescale=0.0)"
        )
    if not 0.0 <= guidance_rescale <= 1.0:
        raise ValueError(f"guidance_rescale={guidance_rescale!r} is out of range; allowed values are 0..1")


def _check_known(known: torch.Tensor | None, known_mask: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """The inpainting mask as a tensor of x's dtype and device, after checking both tensors broadcast to x."""
    if known is None and known_mask is None:
        return None
    if known is None or known_mask is None:
        raise ValueError("inpainting needs both known (the image) and known_mask (1 where it is kept)")
    for name, tensor in (("known", known), ("known_mask", known_mask)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(tensor).__name__}")
        try:
            fits = torch.broadcast_shapes(tensor.shape, x.shape) == x.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(
                f"{name} shape {tuple(tensor.shape)} does not broadcast to the sample shape {tuple(x.shape)}"
            )
    mask = known_mask.to(device=x.device, dtype=x.dtype)
    if not bool(((mask >= 0) & (mask <= 1)).all()):
        raise ValueError("known_mask values must lie in [0, 1] (1: known, kept; 0: generated)")
    return mask


def _replace_known(
    scheduler: DDIMStepping,
    x: torch.Tensor,
    known: torch.Tensor,
    mask: torch.Tensor,
    landing: int,
    generator: Generator,
) -> torch.Tensor:
    """Put ``known``, noised to abar at ``landing`` (-1: the final alpha; -2: none, the end), where ``mask`` is 1."""
    if landing >= 0:
        alpha = float(scheduler.alphas_cumprod[landing])
    else:
        alpha = float(scheduler.final_alpha_cumprod) if landing == -1 else 1.0
    known = known.to(device=x.device, dtype=x.dtype).expand_as(x)
    noised = math.sqrt(alpha) * known
    if alpha < 1.0:
        z = randn_like_diffusers(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        noised = noised + math.sqrt(1 - alpha) * z
    return torch.lerp(x, noised, mask)  # mask 1: known, 0: generated, in between: a soft blend


def _guided_output(
    model: Model,
    unconditional_model: Model | None,
    x: torch.Tensor,
    t: torch.Tensor,
    guidance_scale: float,
    guidance_rescale: float,
    check_finite: bool,
    index: int,
) -> torch.Tensor:
    """The (classifier-free guided) model output at x_t."""
    step_t = int(t[0])
    conditional = model(x, t)
    _check_output("model", conditional, x, index, step_t, check_finite)
    if unconditional_model is None or (guidance_scale == 1.0 and guidance_rescale == 0.0):
        return conditional
    unconditional = unconditional_model(x, t)
    _check_output("unconditional_model", unconditional, x, index, step_t, check_finite)
    guided = unconditional + guidance_scale * (conditional - unconditional)
    if guidance_rescale > 0:
        guided = rescale_noise_cfg(guided, conditional, guidance_rescale)
    return guided


def _check_output(name: str, output: object, x: torch.Tensor, index: int, t: int, check_finite: bool) -> None:
    if not isinstance(output, torch.Tensor) or output.shape != x.shape:
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(
            f"{name} output at step {index} (timestep {t}) must be a tensor of shape {tuple(x.shape)}, got {got}"
        )
    if check_finite and not bool(torch.isfinite(output).all()):
        raise NonFiniteOutputError(f"{name} output at step {index} (timestep {t}) contains NaN or Inf")


def progress_steps(grid: list[int], enabled: bool, description: str = "DDIM sampling") -> Any:
    """``grid`` wrapped in a tqdm bar when enabled and tqdm is installed (it is optional)."""
    if not enabled:
        return grid
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return grid
    return tqdm(grid, desc=description, unit="step")
