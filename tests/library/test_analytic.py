"""The exact analytic model: its predictions, DDIM's first-order convergence, and eta = 1 as DDPM."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

import ddim
from ddim.analytic import GaussianMixtureModel, gaussian_flow

MEANS = torch.tensor([[1.0, -0.5], [-1.5, 0.5], [0.0, 2.0]], dtype=torch.float64)
STDS = torch.tensor([0.3, 0.5, 0.2], dtype=torch.float64)
WEIGHTS = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)


def marginal(alpha: float) -> MixtureSameFamily:
    """p(x_t) of the mixture, built independently with torch.distributions."""
    scale = (alpha * STDS**2 + 1 - alpha).sqrt().unsqueeze(1).expand(-1, 2)
    components = Independent(Normal(math.sqrt(alpha) * MEANS, scale), 1)
    return MixtureSameFamily(Categorical(probs=WEIGHTS), components)


@pytest.mark.parametrize("t", [0, 10, 250, 700, 999])
def test_epsilon_is_minus_sqrt_one_minus_abar_times_the_score(t: int) -> None:
    scheduler = ddim.DDIMScheduler()
    model = GaussianMixtureModel(scheduler.alphas_cumprod, MEANS, STDS, WEIGHTS)
    alpha = float(scheduler.alphas_cumprod[t])
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(t), dtype=torch.float64) * 2
    x.requires_grad_(True)
    score = torch.autograd.grad(marginal(alpha).log_prob(x).sum(), x)[0]
    eps = model(x.detach(), torch.full((32,), t))
    torch.testing.assert_close(eps, -math.sqrt(1 - alpha) * score, rtol=1e-9, atol=1e-9)


def test_prediction_types_are_the_same_model() -> None:
    scheduler = ddim.DDIMScheduler()
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.randint(0, 1000, (16,), generator=torch.Generator().manual_seed(1))
    a = scheduler.alphas_cumprod.double()[t].unsqueeze(1)
    eps, x0, v = (
        GaussianMixtureModel(scheduler.alphas_cumprod, MEANS, STDS, WEIGHTS, prediction_type=p)(x, t)
        for p in ("epsilon", "sample", "v_prediction")
    )
    torch.testing.assert_close(a.sqrt() * x0 + (1 - a).sqrt() * eps, x)  # eq. 4 with the predicted pair
    torch.testing.assert_close(v, a.sqrt() * eps - (1 - a).sqrt() * x0)  # v = sqrt(a) eps - sqrt(1 - a) x0


def test_sample_data_and_bad_arguments() -> None:
    model = GaussianMixtureModel(ddim.DDIMScheduler().alphas_cumprod, MEANS, STDS, WEIGHTS)
    data = model.sample_data(20000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(data.mean(0), (WEIGHTS.unsqueeze(1) * MEANS).sum(0), atol=0.03, rtol=0)
    with pytest.raises(ValueError, match="stds must be > 0"):
        GaussianMixtureModel(torch.ones(3), MEANS, [0.1, 0.0, 0.1])
    with pytest.raises(ValueError, match="weights must be 3 positive numbers"):
        GaussianMixtureModel(torch.ones(3), MEANS, STDS, [1.0, 2.0])
    with pytest.raises(ValueError, match="means must have shape"):
        GaussianMixtureModel(torch.ones(3), [1.0, 2.0], 0.1)
    with pytest.raises(ValueError, match="prediction_type='x0' is not supported"):
        GaussianMixtureModel(torch.ones(3), MEANS, STDS, prediction_type="x0")


def test_gaussian_flow_solves_the_ode() -> None:
    """d x / d sigma = eps(x) in x / sqrt(abar) coordinates (DDIM paper, eq. 14), checked by finite differences."""
    mean, std = 0.7, 0.4
    scheduler = ddim.DDIMScheduler()
    model = GaussianMixtureModel(scheduler.alphas_cumprod, [[mean]], std)
    x = torch.linspace(-3, 3, 7, dtype=torch.float64).unsqueeze(1)
    a, h = 0.3, 1e-6
    sigma = math.sqrt((1 - a) / a)
    a_next = 1 / (1 + (sigma + h) ** 2)
    x_next = gaussian_flow(x, a, a_next, mean, std)
    derivative = (x_next / math.sqrt(a_next) - x / math.sqrt(a)) / h
    torch.testing.assert_close(derivative, model.prediction(x, a), rtol=1e-5, atol=1e-5)


def convergence_errors(steps: list[int]) -> list[float]:
    mean, std = 0.5, 0.3
    errors = []
    x_t = torch.randn(256, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for n in steps:
        scheduler = ddim.DDIMScheduler(clip_sample=False, timestep_spacing="trailing", prev_timestep_from_grid=True)
        model = GaussianMixtureModel(scheduler.alphas_cumprod, [[mean]], std)
        x0 = ddim.sample(model, scheduler, noise=x_t, num_inference_steps=n, progress=False)
        exact = gaussian_flow(x_t, float(scheduler.alphas_cumprod[-1]), 1.0, mean, std)
        errors.append(float((x0 - exact).abs().max()))
    return errors


def test_ddim_converges_at_first_order() -> None:
    steps = [10, 20, 50, 100, 200, 500, 1000]
    errors = convergence_errors(steps)
    slope = np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert -1.15 < slope < -0.85, (slope, errors)
    assert all(b < a for a, b in itertools.pairwise(errors))


def ddpm_posterior(x_t: torch.Tensor, x0: torch.Tensor, a: float, a_prev: float) -> tuple[torch.Tensor, float]:
    """q(x_prev | x_t, x_0) of DDPM (Ho et al. 2020, eqs. 6-7) for a skip t -> prev, beta = 1 - a / a_prev."""
    beta = 1 - a / a_prev
    mean = math.sqrt(a_prev) * beta / (1 - a) * x0 + math.sqrt(1 - beta) * (1 - a_prev) / (1 - a) * x_t
    return mean, (1 - a_prev) / (1 - a) * beta


@pytest.mark.parametrize("n", [10, 1000])
def test_eta_one_is_the_ddpm_posterior_step(n: int) -> None:
    scheduler = ddim.DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(n)
    model = GaussianMixtureModel(scheduler.alphas_cumprod, MEANS, STDS, WEIGHTS)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = torch.randn(8, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for t in scheduler.timesteps.tolist()[:-1]:
        out = scheduler.step(model(x, torch.tensor([t])), t, x, eta=1.0, variance_noise=z)
        a, a_prev = float(scheduler.alphas_cumprod[t]), float(scheduler.alphas_cumprod[scheduler.previous_timestep(t)])
        mean, variance = ddpm_posterior(x, out.pred_original_sample, a, a_prev)
        torch.testing.assert_close(out.prev_sample, mean + math.sqrt(variance) * z, rtol=1e-9, atol=1e-9)


def test_eta_one_with_all_timesteps_equals_diffusers_ddpm_scheduler() -> None:
    from diffusers import DDPMScheduler

    ours = ddim.DDIMScheduler(clip_sample=False)
    ours.set_timesteps(1000)
    reference = DDPMScheduler(clip_sample=False, variance_type="fixed_small")
    reference.set_timesteps(1000)
    model = GaussianMixtureModel(ours.alphas_cumprod, MEANS, STDS, WEIGHTS)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    for t in (999, 500, 37, 2):
        eps = model(x, torch.tensor([t]))
        got = ours.step(eps, t, x, eta=1.0, generator=torch.Generator().manual_seed(t)).prev_sample
        expected = reference.step(eps, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        # diffusers computes 1 - abar_t / abar_prev in float32, which costs ~1e-4 relative at small beta.
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)
