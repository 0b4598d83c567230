"""``ddim.sample``: the whole DDIM sampling loop, and the one result type of the loops.

The loop is x_T ~ N(0, I), then for each grid timestep t (descending)::

    m          = model(x_t, t)                     # prediction of config.prediction_type (a wrapper may guide it)
    x_prev, x0 = scheduler.step(m, t, x_t, eta)    # DDIM paper, eqs. 12 and 16
    x_prev     = model.after_step(x_prev)          # a wrapper's correction (inpainting), else x_prev itself

Guidance and inpainting are model wrappers (:mod:`ddim.guidance`, :mod:`ddim.inpainting`); the old
keywords (``guidance_scale``, ``unconditional_model``, ``guidance_rescale``, ``classifier_gradient``,
``classifier_scale``, ``known``, ``known_mask``) are their short form. The per-step arithmetic is the
scheduler's; this module only orchestrates it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Unpack, overload

import numpy as np
import torch

from ddim.guidance import GuidanceKeywords, wrap_model
from ddim.inpainting import Inpainting
from ddim.model import Model, NonFiniteOutputError, Prediction, after_step, check_output, predict
from ddim.noise import Generator, randn_like_diffusers
from ddim.progress import progress_iter
from ddim.scheduler_protocol import DDIMSchedulerLike
from ddim.validation import ArgumentTypeError, ArgumentValueError, check_bool, is_int

__all__ = ["LoopResult", "Model", "NonFiniteOutputError", "SamplingOutput", "sample"]

#: ``callback(step_index, timestep, x_prev, x0_prediction)``, called after every step.
StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


@dataclass
class LoopResult:
    """What a loop returns when its trajectory is asked for (``sample``'s and ``invert``'s ``return_trajectory``).

    Attributes:
        samples: the loop's result (x_0 for sampling, x_T for inversion).
        intermediates: the states in walk order, the start first and ``samples`` last.
        x0_predictions: each step's predicted x_0 (sampling only).
        timesteps: the grid that was walked, in sampling order.
    """

    samples: torch.Tensor
    intermediates: list[torch.Tensor] = field(default_factory=list)
    x0_predictions: list[torch.Tensor] = field(default_factory=list)
    timesteps: list[int] = field(default_factory=list)

    def __iter__(self) -> Iterator[Any]:
        """``x_T, trajectory = result``: the former ``(tensor, list)`` return of ``invert`` (deprecated)."""
        warnings.warn(
            "unpacking a loop result is deprecated; read result.samples and result.intermediates",
            FutureWarning,
            stacklevel=2,
        )
        return iter((self.samples, self.intermediates))


#: The former name of :class:`LoopResult`.
SamplingOutput = LoopResult


@overload
def sample(
    model: Model,
    scheduler: DDIMSchedulerLike,
    shape: Sequence[int] | None = ...,
    *,
    return_trajectory: Literal[False] = ...,
    noise: torch.Tensor | None = ...,
    num_inference_steps: int | None = ...,
    timesteps: Sequence[int] | np.ndarray | torch.Tensor | None = ...,
    eta: float = ...,
    generator: Generator = ...,
    device: str | torch.device | None = ...,
    dtype: torch.dtype = ...,
    progress: bool | None = ...,
    callback: StepCallback | None = ...,
    check_finite: bool = ...,
    use_clipped_model_output: bool = ...,
    differentiable: bool = ...,
    return_intermediates: bool = ...,
    return_x0_predictions: bool = ...,
    **short_form: Unpack[GuidanceKeywords],
) -> torch.Tensor: ...


@overload
def sample(
    model: Model,
    scheduler: DDIMSchedulerLike,
    shape: Sequence[int] | None = ...,
    *,
    return_trajectory: Literal[True],
    noise: torch.Tensor | None = ...,
    num_inference_steps: int | None = ...,
    timesteps: Sequence[int] | np.ndarray | torch.Tensor | None = ...,
    eta: float = ...,
    generator: Generator = ...,
    device: str | torch.device | None = ...,
    dtype: torch.dtype = ...,
    progress: bool | None = ...,
    callback: StepCallback | None = ...,
    check_finite: bool = ...,
    use_clipped_model_output: bool = ...,
    differentiable: bool = ...,
    return_intermediates: bool = ...,
    return_x0_predictions: bool = ...,
    **short_form: Unpack[GuidanceKeywords],
) -> LoopResult: ...


def sample(
    model: Model,
    scheduler: DDIMSchedulerLike,
    shape: Sequence[int] | None = None,
    *,
    noise: torch.Tensor | None = None,
    num_inference_steps: int | None = 50,
    timesteps: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    eta: float = 0.0,
    generator: Generator = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool | None = None,
    callback: StepCallback | None = None,
    return_trajectory: bool = False,
    check_finite: bool = False,
    use_clipped_model_output: bool = False,
    differentiable: bool = False,
    return_intermediates: bool = False,
    return_x0_predictions: bool = False,
    **short_form: Unpack[GuidanceKeywords],
) -> torch.Tensor | LoopResult:
    """Draw samples with DDIM (DDIM paper, Algorithm in sec. 4.1: eq. 12 applied along the grid).

    Args:
        model: ``model(x_t, t)`` with t a 1-D int64 tensor (one timestep per row, on x_t's device),
            returning the prediction of ``scheduler.config.prediction_type`` (epsilon, sample or v); a
            guidance wrapper (``ddim.guidance.ClassifierFreeGuidance(model, unconditional, scale)``, ...)
            or ``ddim.inpainting.Inpainting`` is a model too.
        scheduler: a ``ddim.DDIMScheduler`` (or ``ddim.diffusers`` one); its ``set_timesteps`` is called.
        shape: shape of the samples, batch first; or give ``noise`` (x_T itself) instead.
        num_inference_steps / timesteps: the number of steps on the configured spacing, or a custom
            strictly decreasing grid (which takes precedence; ``num_inference_steps`` is then unused).
        eta: 0 is deterministic DDIM, 1 is DDPM-like (DDIM paper, eq. 16).
        generator: None, a ``torch.Generator``, or one per batch row; with a list, row i's x_T and
            every step noise come from generator i only (a sample depends on its seed, not its batch).
        callback: called after every step as ``callback(i, t, x_prev, x0_pred)``.
        return_trajectory: return a :class:`LoopResult` with every x_t and every predicted x_0.
        check_finite: raise :class:`NonFiniteOutputError` naming the step at the first non-finite model output.
        differentiable: run the loop with autograd recording (default: under ``torch.no_grad``), so a loss
            on the samples backpropagates into the model's parameters and ``noise``; the numbers are the same.
        progress: a tqdm bar (if tqdm is installed); default: only when stderr is a terminal.
        return_intermediates / return_x0_predictions: deprecated: a :class:`LoopResult` with one of the two lists.
        short_form: guidance and inpainting keywords, the short form of the wrappers: ``guidance_scale`` s,
            ``unconditional_model``, ``guidance_rescale`` (m = m_u + s (m_c - m_u), then ``rescale_noise_cfg``),
            ``classifier_gradient``, ``classifier_scale`` (eps shifted by -sqrt(1 - abar_t) w grad log p(y | x_t)),
            ``known``, ``known_mask`` (known-region replacement after every step, eq. 4).

    Returns:
        The final samples (a tensor), or a :class:`LoopResult` when the trajectory is asked for.
    """
    x = initial_noise(shape, noise, generator, device, dtype)
    model = wrap_model(model, scheduler, short_form)
    if isinstance(model, Inpainting):
        model.check(x)
    for name, flag in (("differentiable", differentiable), ("return_trajectory", return_trajectory)):
        check_bool(name, flag)
    if return_intermediates or return_x0_predictions:
        warnings.warn(
            "return_intermediates / return_x0_predictions are deprecated; pass return_trajectory=True",
            FutureWarning,
            stacklevel=2,
        )
    record_states = return_trajectory or return_intermediates
    record_x0 = return_trajectory or return_x0_predictions
    if timesteps is not None:
        scheduler.set_timesteps(timesteps=timesteps)
    else:
        scheduler.set_timesteps(num_inference_steps)
    plan = scheduler.plan
    steps = plan.grid_steps()
    model_timesteps = plan.model_timesteps(x.shape[0], x.device)
    output = LoopResult(samples=x, timesteps=[step.timestep for step in steps])
    if record_states:
        output.intermediates.append(x)
    step_generator = generator if eta > 0 else None
    last = len(steps) - 1
    with torch.enable_grad() if differentiable else torch.no_grad():
        for step in progress_iter(steps, progress, "DDIM sampling"):
            prediction = predict(model, x, model_timesteps[step.index])
            check_output("model", prediction.output, x, step.index, step.timestep, check_finite)
            x, x0 = scheduler.step(
                prediction.output,
                step.timestep,
                x,
                eta=eta,
                use_clipped_model_output=use_clipped_model_output,
                generator=step_generator,
                return_dict=False,
                **renoise_keyword(prediction),
            )
            x = after_step(model, x, step, step.index == last, generator)
            if record_states:
                output.intermediates.append(x)
            if record_x0:
                output.x0_predictions.append(x0)
            if callback is not None:
                callback(step.index, step.timestep, x, x0)
    output.samples = x
    if return_trajectory or return_intermediates or return_x0_predictions:
        return output
    return x


def renoise_keyword(prediction: Prediction) -> dict[str, torch.Tensor]:
    """``{"renoise_model_output": ...}`` for a CFG++ prediction, else nothing (any diffusers-style step works)."""
    return {} if prediction.renoise is None else {"renoise_model_output": prediction.renoise}


def initial_noise(
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
