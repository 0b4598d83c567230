"""``ddim_step_with_logprob``: a stochastic DDIM step and the log-density of its result, for RL fine-tuning.

Policy-gradient fine-tuning of diffusion models (DDPO, Black et al. 2023, arXiv 2305.13301) treats each
eta > 0 DDIM step as a Gaussian policy: x_prev ~ N(mu_theta(x_t, t), sigma_t^2 I), with mu the step's
noise-free part (DDIM paper, eq. 12) and sigma_t = eta sqrt((1 - abar_prev) / (1 - abar_t))
sqrt(1 - abar_t / abar_prev) (eq. 16). The log-density of x_prev under it, per element::

    log p = -(x_prev - mu)^2 / (2 sigma^2) - log sigma - log sqrt(2 pi)

DDPO's function reduces it by the mean over every non-batch dimension and takes the previous timestep
as ``clamp(t - T // N, 0, T - 1)``, so its last step lands on ``alphas_cumprod[0]`` instead of the final
alpha; both are the defaults here, so training code ported from it gets the same numbers.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from ddim.coefficients import STD, DeviceRows
from ddim.noise import Generator, randn_like_diffusers
from ddim.scheduler_protocol import DDIMSchedulerLike
from ddim.stepping import DDIMStepping, check_eta, check_renoise
from ddim.tensor_checks import Timestep, check_floating, check_step_tensors
from ddim.update import coefficient_rows, columns_of, torch_update
from ddim.validation import ArgumentTypeError, ArgumentValueError, check_bool, check_str_choice

Reduction = Literal["mean", "sum", "none"]
REDUCTIONS = ("mean", "sum", "none")
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def ddim_step_with_logprob(
    scheduler: DDIMSchedulerLike,
    model_output: torch.Tensor,
    timestep: Timestep,
    sample: torch.Tensor,
    eta: float = 0.0,
    use_clipped_model_output: bool = False,
    generator: Generator = None,
    prev_sample: torch.Tensor | None = None,
    *,
    reduction: Reduction = "mean",
    clamp_prev_timestep: bool = True,
    renoise_model_output: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prev_sample, log_prob)`` of one DDIM step with eta > 0 (see the module doc for the density).

    DDPO's signature and numbers. ``prev_sample`` None draws x_prev = mu + sigma z (z as diffusers
    draws it, from ``generator``); given, it is scored as data (no gradient flows into it). The
    log-density is differentiable with respect to ``model_output`` (and ``sample``): the policy-gradient
    ratio needs it. ``timestep``: an int, a 0-dim tensor, one per batch row, or any shape S with
    ``sample.shape[:len(S)] == S``; device tensors are never read on the host (an out-of-range or
    zero-sigma entry then gives NaN). ``reduction``: ``"mean"`` over the non-batch dimensions (DDPO),
    ``"sum"`` (the joint log-density of the step), or ``"none"`` (per element).
    ``clamp_prev_timestep=False`` lands where ``scheduler.step`` lands instead (the final alpha at the
    last step, the next grid point with ``prev_timestep_from_grid=True``). Raises ``ValueError`` where
    the density does not exist: eta = 0, or sigma^2 below the compute dtype's smallest normal number at a
    host timestep (the last step of an unclamped grid whose final alpha is 1, or an eta so small that sigma^2
    underflows). ``renoise_model_output``: CFG++'s unconditional output, the mean's
    noise direction (the guided output is ``model_output``; see ``DDIMScheduler.step``).
    """
    if not isinstance(scheduler, DDIMStepping):
        raise ArgumentTypeError(
            f"scheduler must be a ddim DDIMScheduler (or a ddim.diffusers one), got {type(scheduler).__name__}"
        )
    if scheduler.num_inference_steps is None:
        raise ArgumentValueError("ddim_step_with_logprob() called before scheduler.set_timesteps(num_inference_steps)")
    check_step_tensors(model_output, sample)
    eta = check_eta(eta)
    if eta == 0.0:
        raise ArgumentValueError("eta=0.0 makes the step deterministic: its log-density does not exist; use eta > 0")
    check_bool("use_clipped_model_output", use_clipped_model_output)
    check_bool("clamp_prev_timestep", clamp_prev_timestep)
    check_str_choice("reduction", reduction, REDUCTIONS)
    if prev_sample is not None:
        if generator is not None:
            raise ArgumentValueError(
                "pass either generator or prev_sample, not both (prev_sample is scored, not drawn)"
            )
        check_floating("prev_sample", prev_sample)
        if prev_sample.shape != sample.shape:
            raise ArgumentValueError(
                f"prev_sample shape {tuple(prev_sample.shape)} must equal sample shape {tuple(sample.shape)}"
            )
    if renoise_model_output is not None:
        check_renoise(renoise_model_output, sample, use_clipped_model_output)
    plan = scheduler.plan
    landing = plan.ddpo_landing() if clamp_prev_timestep else None
    rule = plan.rule(scheduler.config, eta, use_clipped_model_output, landing, split=renoise_model_output is not None)
    coefficients = rule.coefficients(timestep, sample)
    rows = coefficient_rows(coefficients, sample)  # device rows gathered once, for the mean and for sigma
    if rows is not None:
        coefficients = DeviceRows(rows)
    mean, _ = torch_update(sample, model_output, coefficients, rule.terms, rule.transform, None, renoise_model_output)
    std = columns_of(coefficients, sample)[STD]
    check_sigma(std, timestep, mean.dtype)
    if prev_sample is None:
        noise = randn_like_diffusers(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
        prev_sample = (mean + std * noise).to(sample.dtype)
    data = prev_sample.detach()
    work = mean.dtype
    sigma = torch.as_tensor(std, dtype=work, device=sample.device)
    log_prob = -((data.to(work) - mean) ** 2) / (2 * sigma**2) - torch.log(sigma) - LOG_SQRT_2PI
    return prev_sample, reduce_per_row(log_prob, reduction)


def reduce_per_row(values: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """``values`` reduced over every dimension but the first: one number per batch row, never fewer.

    A 1-D ``values`` (one scalar per row) is already per row and is returned as it is for every reduction.
    """
    if reduction == "none" or values.ndim <= 1:
        return values
    dims = tuple(range(1, values.ndim))
    return values.mean(dim=dims) if reduction == "mean" else values.sum(dim=dims)


def check_sigma(std: float | torch.Tensor, timestep: Timestep, dtype: torch.dtype) -> None:
    """``ValueError`` where the density does not exist in ``dtype``: sigma^2 below its smallest normal number
    (sigma = 0, or an eta so small that sigma^2 underflows). Host values are checked (a host row, or rows on
    the CPU); rows on an accelerator or in a ``torch.compile`` graph are never read: a zero sigma there gives NaN."""
    tiny = torch.finfo(dtype).tiny
    if not isinstance(std, torch.Tensor):
        if std * std < tiny:
            raise ArgumentValueError(
                f"sigma is 0 at timestep={int(timestep)} in {dtype} (sigma={std!r}: sigma^2 is below its smallest "
                "normal number; the step lands where abar_prev = abar_t, or on abar = 1, or eta is too small): "
                "the step is deterministic there and has no log-density"
            )
        return
    if std.device.type != "cpu" or std.numel() == 0 or torch.compiler.is_compiling():
        return  # never read on an accelerator, nor inside a compiled graph (one graph, no break)
    small = (std.to(dtype) ** 2 < tiny).reshape(std.shape[0], -1).any(dim=1)
    if bool(small.any()):
        row = int(small.nonzero()[0])
        steps = torch.as_tensor(timestep).reshape(-1)
        at = int(steps[row if steps.numel() > 1 else 0])
        value = float(std.reshape(std.shape[0], -1)[row, 0])
        raise ArgumentValueError(
            f"sigma is 0 at timestep={at} (batch row {row}) in {dtype} (sigma={value!r}: "
            "sigma^2 is below its smallest normal number; abar_prev = abar_t, abar = 1, or eta too small): "
            "the step is deterministic there and has no log-density"
        )
