"""DDPO-style policy-gradient fine-tuning of the digits UNet towards one digit (application code).

Each stochastic DDIM step (eta > 0) is a Gaussian policy x_prev ~ N(mu_theta(x_t, t), sigma_t^2 I)
(DDPO: Black et al. 2023, arXiv 2305.13301, "Training Diffusion Models with Reinforcement Learning").
One iteration draws a batch of trajectories without gradient, rewards each final sample with the
shipped classifier's probability of the target digit, normalises the rewards within the batch
(advantages A = (r - mean) / std, clipped to +-``advantage_clip``), re-scores every recorded transition
with ``ddim_step_with_logprob(..., prev_sample=recorded)`` with gradient, and minimises (sums over the
K policy steps, means over the batch; log p averaged over pixels, as DDPO does)::

    DDPO-SF ("sf"):  L = -sum_k mean_b A_b log p_theta(x_{k+1} | x_k)
    DDPO-IS ("is"):  L =  sum_k mean_b max(-A_b r_kb, -A_b clip(r_kb, 1 - c, 1 + c)),
                     r = exp(log p_theta - log p_old)   (PPO's clipped surrogate, as DDPO)

At r = 1 (on policy) both have the same gradient. Two additions that DDPO does not have, both on by
default because plain DDPO-SF fooled the classifier here (docs/evaluation.md):

- ``min_sigma``: policy steps with sigma below it are sampled but left out of the policy-gradient term.
  The score term grows as 1 / sigma while so small a noise barely moves the reward: at S = 20 the step
  landing on t = 0 (sigma 0.01) gave a gradient 20x that of any other step, and drowned them.
- ``kl_weight``: adds ``kl_weight`` x the KL from the original model's step Gaussian, per pixel, summed
  over every policy step at the visited states (as DPOK, Fan et al. 2023, regularises).

A grid step whose sigma is 0 (the digits model's last step, t = 0, lands on abar = 1) is deterministic:
it has no log-density and is not part of the policy.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ddim.app.digits.classifier import NUM_CLASSES, DigitsClassifier
from ddim.app.digits.data import SAMPLE_SHAPE, batch_shape_text
from ddim.logprob import ddim_step_with_logprob
from ddim.noise import randn_like_diffusers
from ddim.scheduler import DDIMScheduler
from ddim.validation import ArgumentValueError, check_int, check_real, check_str_choice

Objective = Literal["sf", "is"]
OBJECTIVES = ("sf", "is")
#: ``reward(samples) -> (B,)`` rewards.
Reward = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class PolicyGradientConfig:
    """Hyper-parameters of :func:`fine_tune` (defaults: the documented run of ``examples/ddpo_digits.py``)."""

    target: int = 3
    iterations: int = 60
    batch_size: int = 64
    num_inference_steps: int = 20
    eta: float = 1.0
    learning_rate: float = 5e-4
    objective: Objective = "sf"
    clip_range: float = 1e-4
    inner_epochs: int = 1
    minibatches: int = 1
    advantage_clip: float = 5.0
    max_grad_norm: float = 1.0
    kl_weight: float = 0.1
    min_sigma: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("target", self.target, 0, NUM_CLASSES - 1)
        for name in ("iterations", "num_inference_steps", "inner_epochs", "minibatches"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("batch_size", self.batch_size, minimum=2)
        check_int("seed", self.seed, minimum=0)
        check_real("eta", self.eta, 0.0, open_minimum=True)
        for name in ("learning_rate", "clip_range", "advantage_clip", "max_grad_norm"):
            check_real(name, getattr(self, name), 0.0, open_minimum=True)
        check_real("kl_weight", self.kl_weight, 0.0)
        check_real("min_sigma", self.min_sigma, 0.0)
        check_str_choice("objective", self.objective, OBJECTIVES)
        if self.minibatches > self.batch_size:
            raise ArgumentValueError(
                f"minibatches={self.minibatches} is out of range; allowed values are 1..batch_size={self.batch_size}"
            )


@dataclass
class Trajectories:
    """A batch of sampled trajectories: the policy steps' states, timesteps, log-densities and the samples.

    ``latents[k]`` is the state before policy step k and ``latents[k + 1]`` the one it drew
    (``latents``: (K + 1, B, 1, 8, 8)); ``log_probs`` (K, B) are those of the sampling policy.
    """

    latents: torch.Tensor
    timesteps: list[int]
    log_probs: torch.Tensor
    samples: torch.Tensor


def target_probability(classifier: DigitsClassifier, samples: torch.Tensor, target: int) -> torch.Tensor:
    """The classifier's probability (B,) of digit ``target`` for samples (B, 1, 8, 8), clipped to [-1, 1]."""
    target = check_int("target", target, 0, NUM_CLASSES - 1)
    if samples.ndim != 4 or tuple(samples.shape[1:]) != SAMPLE_SHAPE:
        raise ArgumentValueError(f"samples must have shape {batch_shape_text('B')}, got {tuple(samples.shape)}")
    with torch.no_grad():
        logits = classifier(samples.detach().float().clamp(-1, 1))
    return torch.softmax(logits, dim=1)[:, target]


def target_reward(classifier: DigitsClassifier, target: int) -> Reward:
    """``reward(samples)``: :func:`target_probability` of ``target`` (the classifier set to eval mode)."""
    target = check_int("target", target, 0, NUM_CLASSES - 1)
    classifier.eval()
    return lambda samples: target_probability(classifier, samples, target)


def policy_steps(scheduler: DDIMScheduler, eta: float) -> list[bool]:
    """For each grid timestep (after ``set_timesteps``): whether its step is stochastic (sigma > 0)."""
    return [eta * math.sqrt(float(scheduler.step_variance(int(t)))) > 0 for t in scheduler.timesteps]


@torch.no_grad()
def sample_trajectories(
    unet: torch.nn.Module,
    scheduler: DDIMScheduler,
    batch_size: int,
    num_inference_steps: int,
    eta: float,
    generator: torch.Generator,
) -> Trajectories:
    """Draw ``batch_size`` trajectories (x_T, then every step's noise, from ``generator``).

    The samples are those of ``ddim.sample(unet, scheduler, (B, 1, 8, 8), num_inference_steps=...,
    eta=eta, generator=generator)``: the same draws in the same order.
    """
    check_int("batch_size", batch_size, minimum=1)
    check_real("eta", eta, 0.0, open_minimum=True)
    scheduler.set_timesteps(num_inference_steps)
    stochastic = policy_steps(scheduler, eta)
    count = sum(stochastic)
    if count == 0 or stochastic != [True] * count + [False] * (len(stochastic) - count):
        raise ArgumentValueError(
            f"num_inference_steps={num_inference_steps}: the grid's stochastic steps must come first, "
            "then only deterministic ones (sigma = 0)"
        )
    x = randn_like_diffusers((batch_size, *SAMPLE_SHAPE), generator=generator)
    latents, timesteps, log_probs = [x], [], []
    for t, policy in zip(scheduler.timesteps.tolist(), stochastic, strict=True):
        eps = unet(x, torch.full((batch_size,), t, dtype=torch.int64))
        if policy:
            x, log_prob = ddim_step_with_logprob(
                scheduler, eps, t, x, eta, generator=generator, clamp_prev_timestep=False
            )
            latents.append(x)
            timesteps.append(t)
            log_probs.append(log_prob)
        else:  # draws (and discards) its noise as scheduler.step does, so the draws match ddim.sample
            x = scheduler.step(eps, t, x, eta=eta, generator=generator).prev_sample
    return Trajectories(torch.stack(latents), timesteps, torch.stack(log_probs), x)


def step_output(
    unet: torch.nn.Module, trajectories: Trajectories, step: int, rows: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
    """``(x, x_next, t, eps)`` of policy step ``step`` (of ``rows`` only, when given): eps = unet(x, t)."""
    x, x_next = trajectories.latents[step], trajectories.latents[step + 1]
    if rows is not None:
        x, x_next = x[rows], x_next[rows]
    t = trajectories.timesteps[step]
    return x, x_next, t, unet(x, torch.full((x.shape[0],), t, dtype=torch.int64))


def step_log_probs(
    unet: torch.nn.Module,
    scheduler: DDIMScheduler,
    trajectories: Trajectories,
    step: int,
    eta: float,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """log p_theta (B,) of policy step ``step``'s recorded transition (of ``rows`` only, when given), with grad."""
    x, x_next, t, eps = step_output(unet, trajectories, step, rows)
    return ddim_step_with_logprob(scheduler, eps, t, x, eta, prev_sample=x_next, clamp_prev_timestep=False)[1]


def kl_coefficient(scheduler: DDIMScheduler, timestep: int, eta: float) -> float:
    """w with KL(N(mu_a, s^2 I) || N(mu_b, s^2 I)), averaged over pixels, = w * mean (eps_a - eps_b)^2.

    The step's mean is mu = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - s^2) eps with
    x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) (DDIM paper, eq. 12), so mu_a - mu_b = c (eps_a - eps_b),
    c = sqrt(1 - abar_prev - s^2) - sqrt(abar_prev (1 - abar_t) / abar_t), and w = c^2 / (2 s^2). Needs an
    epsilon-prediction scheduler without clipping or thresholding (mu is then linear in eps).
    """
    config = scheduler.config
    if config.prediction_type != "epsilon" or config.clip_sample or config.thresholding:
        raise ArgumentValueError(
            "the KL penalty needs prediction_type='epsilon', clip_sample=False and thresholding=False"
        )
    table = scheduler.alphas_cumprod.double()
    prev = scheduler.previous_timestep(timestep)
    abar = float(table[timestep])
    abar_prev = float(table[prev]) if prev >= 0 else float(scheduler.final_alpha_cumprod)
    variance = eta**2 * (1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)
    if not variance > 0:
        raise ArgumentValueError(f"sigma is 0 at timestep={timestep}: the step has no KL")
    c = math.sqrt(max(1 - abar_prev - variance, 0.0)) - math.sqrt(abar_prev * (1 - abar) / abar)
    return c**2 / (2 * variance)


def normalised_advantages(rewards: torch.Tensor, clip: float = math.inf) -> torch.Tensor:
    """(r - mean) / std within the batch (std with ddof 0, plus 1e-8), clipped to [-clip, clip]."""
    if rewards.ndim != 1 or rewards.shape[0] < 2:
        raise ArgumentValueError(f"rewards must have shape (B >= 2,), got {tuple(rewards.shape)}")
    if not clip > 0:
        raise ArgumentValueError(f"clip={clip!r} is out of range; allowed values are > 0")
    advantages = (rewards - rewards.mean()) / (rewards.std(correction=0) + 1e-8)
    return advantages.clamp(-clip, clip)


def policy_gradient_loss(
    log_probs: torch.Tensor,
    advantages: torch.Tensor,
    old_log_probs: torch.Tensor | None = None,
    clip_range: float | None = None,
) -> torch.Tensor:
    """The loss of the module doc for log-densities (K, B) and advantages (B,).

    Without ``old_log_probs``: DDPO-SF; with them (and ``clip_range``): DDPO-IS.
    """
    if log_probs.ndim != 2 or advantages.shape != log_probs.shape[1:]:
        raise ArgumentValueError(
            f"log_probs must be (K, B) and advantages (B,), got {tuple(log_probs.shape)} and {tuple(advantages.shape)}"
        )
    advantages = advantages.detach()
    if old_log_probs is None:
        return -(advantages * log_probs).mean(dim=1).sum()
    if old_log_probs.shape != log_probs.shape:
        raise ArgumentValueError(
            f"old_log_probs shape {tuple(old_log_probs.shape)} must equal log_probs shape {tuple(log_probs.shape)}"
        )
    if clip_range is None:
        raise ArgumentValueError("clip_range is needed with old_log_probs (DDPO-IS)")
    clip_range = check_real("clip_range", clip_range, 0.0, open_minimum=True)
    ratio = torch.exp(log_probs - old_log_probs.detach())
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    return torch.maximum(unclipped, clipped).mean(dim=1).sum()


def trained_steps(scheduler: DDIMScheduler, timesteps: list[int], config: PolicyGradientConfig) -> list[int]:
    """The indices of the policy steps whose sigma is at least ``config.min_sigma`` (those the loss sums over)."""
    sigmas = [config.eta * math.sqrt(float(scheduler.step_variance(t))) for t in timesteps]
    return [k for k, sigma in enumerate(sigmas) if sigma >= config.min_sigma]


def update_policy(
    unet: torch.nn.Module,
    scheduler: DDIMScheduler,
    optimizer: torch.optim.Optimizer,
    trajectories: Trajectories,
    advantages: torch.Tensor,
    config: PolicyGradientConfig,
    generator: torch.Generator,
    reference: torch.nn.Module | None = None,
) -> tuple[float, float | None]:
    """The optimiser steps of one iteration (``inner_epochs`` x ``minibatches``); returns the mean loss and KL.

    The policy-gradient term sums over :func:`trained_steps`; with a ``reference`` the loss adds
    ``kl_weight`` x the KL (per pixel, :func:`kl_coefficient`) of the policy from it on the visited states,
    summed over every policy step (the returned KL: None without a reference).
    Each step's loss is back-propagated on its own (the loss is a sum over steps), so only one step's
    graph is held at a time.
    """
    if config.kl_weight > 0 and reference is None:
        raise ArgumentValueError(f"kl_weight={config.kl_weight} needs a reference model")
    batch = advantages.shape[0]
    trained = set(trained_steps(scheduler, trajectories.timesteps, config))
    losses, kls = [], []
    for _ in range(config.inner_epochs):
        order = torch.randperm(batch, generator=generator) if config.minibatches > 1 else torch.arange(batch)
        for rows in order.tensor_split(config.minibatches):
            optimizer.zero_grad(set_to_none=True)
            total, total_kl = 0.0, 0.0
            for step, t in enumerate(trajectories.timesteps):
                if step not in trained and reference is None:
                    continue
                x, x_next, _, eps = step_output(unet, trajectories, step, rows)
                loss = torch.zeros(())
                if step in trained:
                    log_prob = ddim_step_with_logprob(
                        scheduler, eps, t, x, config.eta, prev_sample=x_next, clamp_prev_timestep=False
                    )[1][None]
                    old = trajectories.log_probs[step, rows][None] if config.objective == "is" else None
                    loss = policy_gradient_loss(log_prob, advantages[rows], old, config.clip_range)
                if reference is not None:
                    with torch.no_grad():
                        eps_ref = reference(x, torch.full((x.shape[0],), t, dtype=torch.int64))
                    kl = kl_coefficient(scheduler, t, config.eta) * ((eps - eps_ref) ** 2).mean()
                    loss = loss + config.kl_weight * kl
                    total_kl += float(kl.detach())
                loss.backward()
                total += float(loss.detach())
            torch.nn.utils.clip_grad_norm_(unet.parameters(), config.max_grad_norm)
            optimizer.step()
            losses.append(total)
            kls.append(total_kl)
    return sum(losses) / len(losses), (sum(kls) / len(kls) if reference is not None else None)


def fine_tune(
    unet: torch.nn.Module,
    scheduler: DDIMScheduler,
    reward: Reward,
    config: PolicyGradientConfig,
    progress: Callable[[dict[str, Any]], None] | None = None,
    reference: torch.nn.Module | None = None,
) -> list[dict[str, Any]]:
    """Fine-tune ``unet`` in place for ``config.iterations`` iterations; returns one record per iteration.

    A record: ``iteration``, ``reward_mean`` and ``reward_std`` of the iteration's (on-policy) batch,
    ``loss``, ``kl`` (from ``reference``; with ``kl_weight`` > 0 and none given, a frozen copy of
    ``unet`` as it was), ``seconds``. Seeded by ``config.seed`` (one generator for every draw): the same config,
    model and PyTorch build on the same machine give the same weights.
    """
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    if reference is None and config.kl_weight > 0:
        reference = copy.deepcopy(unet).requires_grad_(False)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.learning_rate, weight_decay=0.0)
    history = []
    for iteration in range(config.iterations):
        start = time.perf_counter()
        trajectories = sample_trajectories(
            unet, scheduler, config.batch_size, config.num_inference_steps, config.eta, generator
        )
        rewards = reward(trajectories.samples)
        advantages = normalised_advantages(rewards, config.advantage_clip)
        loss, kl = update_policy(unet, scheduler, optimizer, trajectories, advantages, config, generator, reference)
        record = {
            "iteration": iteration,
            "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std(correction=0)),
            "loss": loss,
            "kl": kl,
            "seconds": time.perf_counter() - start,
        }
        history.append(record)
        if progress is not None:
            progress(record)
    return history


@torch.no_grad()
def draw_samples(
    unet: torch.nn.Module,
    scheduler: DDIMScheduler,
    count: int,
    num_inference_steps: int,
    eta: float,
    seed: int,
    batch_size: int = 500,
) -> torch.Tensor:
    """``count`` samples, ``batch_size`` per model call, from one ``torch.Generator().manual_seed(seed)``."""
    check_int("count", count, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    generator = torch.Generator().manual_seed(seed)
    batches = [
        sample_trajectories(unet, scheduler, min(batch_size, count - first), num_inference_steps, eta, generator)
        for first in range(0, count, batch_size)
    ]
    return torch.cat([b.samples for b in batches])
