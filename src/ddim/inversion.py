"""``ddim.invert``: encode x_0 into a latent by walking a sampling grid backwards (DDIM paper, sec. 4.3).

Three methods, one call:

- ``"ddim"`` (default): each eta = 0 sampling step (eq. 12), in reverse order, solved for its start
  with the model read at the step's end; the reconstruction error falls with N (the paper's Table 2)
  and vanishes with fixed-point refinement. Returns x_T, sampled back by ``ddim.sample``.
- ``"edict"`` / ``"bdia"``: the exactly invertible updates of :mod:`ddim.exact_inversion`; return a
  latent that ``ddim.sample_exact`` samples back to x_0 up to rounding, for any model.

Classifier-free guidance has the meaning of ``ddim.sample``'s; sampling back with the same guidance
retraces the inversion.
"""

from __future__ import annotations

from typing import Literal, Unpack, get_args, overload

import torch

from ddim.exact_inversion import (
    BDIA_GAMMA,
    EDICT_P,
    BDIALatent,
    EDICTLatent,
    bdia_invert,
    check_gamma,
    check_p,
    edict_invert,
)
from ddim.guidance import ClassifierFreeKeywords
from ddim.inversion_steps import Timesteps, check_exact_grid, ddim_inverse_step, grid_steps, make_denoiser
from ddim.model import Model
from ddim.progress import progress_iter
from ddim.sampling import LoopResult
from ddim.scheduler_protocol import DDIMSchedulerLike
from ddim.tensor_checks import check_floating
from ddim.validation import ArgumentValueError, check_bool, check_int, check_str_choice

#: The most fixed-point refinements per step: each costs a model call, and the iteration converges within a few
#: (geometrically, when it converges at all), so a larger count asks for a run that never ends.
MAX_FIXED_POINT_ITERATIONS = 1000

InversionMethod = Literal["ddim", "edict", "bdia"]
INVERSION_METHODS: tuple[str, ...] = get_args(InversionMethod)


@overload
def invert(
    model: Model,
    scheduler: DDIMSchedulerLike,
    sample: torch.Tensor,
    *,
    method: Literal["ddim"] = ...,
    return_trajectory: Literal[False] = ...,
    num_inference_steps: int | None = ...,
    timesteps: Timesteps = ...,
    fixed_point_iterations: int = ...,
    p: float | None = ...,
    gamma: float | None = ...,
    progress: bool | None = ...,
    **short_form: Unpack[ClassifierFreeKeywords],
) -> torch.Tensor: ...


@overload
def invert(
    model: Model,
    scheduler: DDIMSchedulerLike,
    sample: torch.Tensor,
    *,
    method: Literal["ddim"] = ...,
    return_trajectory: Literal[True],
    num_inference_steps: int | None = ...,
    timesteps: Timesteps = ...,
    fixed_point_iterations: int = ...,
    p: float | None = ...,
    gamma: float | None = ...,
    progress: bool | None = ...,
    **short_form: Unpack[ClassifierFreeKeywords],
) -> LoopResult: ...


@overload
def invert(
    model: Model,
    scheduler: DDIMSchedulerLike,
    sample: torch.Tensor,
    *,
    method: Literal["edict"],
    return_trajectory: Literal[False] = ...,
    num_inference_steps: int | None = ...,
    timesteps: Timesteps = ...,
    fixed_point_iterations: int = ...,
    p: float | None = ...,
    gamma: float | None = ...,
    progress: bool | None = ...,
    **short_form: Unpack[ClassifierFreeKeywords],
) -> EDICTLatent: ...


@overload
def invert(
    model: Model,
    scheduler: DDIMSchedulerLike,
    sample: torch.Tensor,
    *,
    method: Literal["bdia"],
    return_trajectory: Literal[False] = ...,
    num_inference_steps: int | None = ...,
    timesteps: Timesteps = ...,
    fixed_point_iterations: int = ...,
    p: float | None = ...,
    gamma: float | None = ...,
    progress: bool | None = ...,
    **short_form: Unpack[ClassifierFreeKeywords],
) -> BDIALatent: ...


def invert(
    model: Model,
    scheduler: DDIMSchedulerLike,
    sample: torch.Tensor,
    *,
    num_inference_steps: int | None = 50,
    timesteps: Timesteps = None,
    method: str = "ddim",
    fixed_point_iterations: int = 0,
    p: float | None = None,
    gamma: float | None = None,
    return_trajectory: bool = False,
    progress: bool | None = False,
    **short_form: Unpack[ClassifierFreeKeywords],
) -> torch.Tensor | LoopResult | EDICTLatent | BDIALatent:
    """Encode x_0 (``sample``) by walking the sampling grid of ``scheduler`` backwards.

    Args:
        model: the model, or a guidance wrapper (``ddim.guidance.ClassifierFreeGuidance``).
        num_inference_steps / timesteps: the grid, as in ``ddim.sample`` (``timesteps`` takes precedence).
        method: ``"ddim"``: for each step t -> s, in reverse order, solve the eta = 0 step for x_t::

                eps = eps(model(x, t))                    x = x_s, or the current x_t estimate
                x_t = sqrt(abar_t) (x_s - sqrt(1 - abar_s) eps) / sqrt(abar_s) + sqrt(1 - abar_t) eps

            returning x_T; ``ddim.sample(model, scheduler, noise=x_T, ...)`` on the same grid
            reconstructs x_0 approximately. ``"edict"`` (EDICT, arXiv 2211.12446) returns an
            :class:`~ddim.exact_inversion.EDICTLatent`, ``"bdia"`` (BDIA-DDIM, arXiv 2307.10829) a
            :class:`~ddim.exact_inversion.BDIALatent`; ``ddim.sample_exact(model, scheduler, latent)``
            reconstructs x_0 exactly (up to rounding) for any model. EDICT costs 2 model calls a
            step, BDIA and DDIM one.
        fixed_point_iterations: k > 0 re-solves each ``"ddim"`` step k times with eps from the model
            at the current x_t estimate (the fixed point is the exact inverse); with ``"bdia"`` it
            refines the one approximate step, the last (from x_0). Not for ``"edict"``. At most
            :data:`MAX_FIXED_POINT_ITERATIONS` (1000).
        p: EDICT's mixing weight, default 0.93 (the paper's); ``"edict"`` only. Allowed: [p_min(N), 1] with
            p_min(N) = 1e10^(-1/(2N)) (the inverse grows rounding by p^-2N; e.g. N = 50: ~0.794, N = 200: ~0.944,
            N = 1000: ~0.989), where the float64 round trip stays within ~1e-6.
        gamma: BDIA's gamma, default 1 (the official code's for inversion); ``"bdia"`` only. Allowed:
            [gamma_min(N), 1] with gamma_min(N) = 1e10^(-1/(N-1)) (e.g. N = 50: ~0.625, N = 1000: ~0.977).
        return_trajectory: ``"ddim"`` only: a :class:`~ddim.sampling.LoopResult` whose ``intermediates`` are
            [x_0, ..., x_T] and ``samples`` x_T.
        progress: a tqdm bar over the steps (if tqdm is installed; ``None``: only on a terminal).
        short_form: ``guidance_scale`` / ``unconditional_model`` / ``guidance_rescale``: classifier-free
            guidance as in ``ddim.sample``; sample back with the same values to reconstruct.

    Needs ``clip_sample=False`` and ``thresholding=False`` (clipping x_0 is not invertible). The
    scheduler's ``set_timesteps`` is called.
    """
    check_str_choice("method", method, INVERSION_METHODS)
    if scheduler.config.clip_sample or scheduler.config.thresholding:
        raise ArgumentValueError(
            f"invert needs clip_sample=False and thresholding=False (clipping x_0 is not invertible); got "
            f"clip_sample={scheduler.config.clip_sample}, thresholding={scheduler.config.thresholding}"
        )
    iterations = check_int(
        "fixed_point_iterations", fixed_point_iterations, minimum=0, maximum=MAX_FIXED_POINT_ITERATIONS
    )
    check_bool("return_trajectory", return_trajectory)
    check_floating("sample", sample)
    check_method_options(method, iterations, p, gamma, return_trajectory)
    denoiser = make_denoiser(model, scheduler, short_form, "invert")
    steps = grid_steps(scheduler, num_inference_steps, timesteps)
    if method == "edict":
        weight = check_p(EDICT_P if p is None else p, len(steps))
    elif method == "bdia":
        weight = check_gamma(BDIA_GAMMA if gamma is None else gamma, len(steps), allow_zero=False)
    with torch.no_grad():
        if method != "ddim":
            check_exact_grid(steps)
            if method == "edict":
                return edict_invert(denoiser, sample, steps, weight, progress)
            return bdia_invert(denoiser, sample, steps, weight, iterations, progress)
        x = sample
        trajectory = [x]
        for step in progress_iter(list(reversed(steps)), progress, "DDIM inversion"):
            x = ddim_inverse_step(denoiser, x, step, iterations)
            trajectory.append(x)
    if return_trajectory:
        return LoopResult(samples=x, intermediates=trajectory, timesteps=[step.timestep for step in steps])
    return x


def check_method_options(
    method: str, iterations: int, p: float | None, gamma: float | None, return_trajectory: bool
) -> None:
    """``ValueError`` for an option the chosen method does not have (never silently ignored)."""
    unused = []
    if p is not None and method != "edict":
        unused.append(f"p={p!r} (EDICT's mixing weight)")
    if gamma is not None and method != "bdia":
        unused.append(f"gamma={gamma!r} (BDIA's parameter)")
    if iterations and method == "edict":
        unused.append(f"fixed_point_iterations={iterations} (EDICT inverts exactly)")
    if return_trajectory and method != "ddim":
        unused.append("return_trajectory=True (method='ddim' only)")
    if unused:
        raise ArgumentValueError(f"method={method!r} does not take {', '.join(unused)}")
