"""CFG++ (Chung et al., arXiv 2406.08070): x0 from the guided noise, the step renoising with the unconditional one.

References are written out here from the paper's Algorithm 1, in float64, independently of the package.
"""

from __future__ import annotations

import math

import pytest
import torch

import ddim
from ddim.analytic import GaussianMixtureModel
from ddim.paper_step import cfg_pp_step


def cfg_pp_reference(e_c: torch.Tensor, e_u: torch.Tensor, x: torch.Tensor, a: float, a_prev: float, lam: float):
    """Algorithm 1 of the CFG++ paper (eta = 0), epsilon prediction."""
    e_guided = e_u + lam * (e_c - e_u)
    x0 = (x - math.sqrt(1 - a) * e_guided) / math.sqrt(a)
    return math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * e_u, x0


def models() -> tuple[ddim.DDIMScheduler, GaussianMixtureModel, GaussianMixtureModel]:
    scheduler = ddim.DDIMScheduler(clip_sample=False, timestep_spacing="trailing", prev_timestep_from_grid=True)
    means = torch.tensor([[1.5, -0.5], [-1.0, 1.0]])
    conditional = GaussianMixtureModel(scheduler.alphas_cumprod, means[:1], 0.3)
    unconditional = GaussianMixtureModel(scheduler.alphas_cumprod, means, 0.3)
    return scheduler, conditional, unconditional


@pytest.mark.parametrize("lam", [0.0, 0.4, 1.0])
def test_the_step_is_the_papers_algorithm(lam: float) -> None:
    scheduler, conditional, unconditional = models()
    scheduler.set_timesteps(10)
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for t in scheduler.timesteps.tolist():
        t_rows = torch.full((5,), t)
        e_c, e_u = conditional(x, t_rows), unconditional(x, t_rows)
        a = float(scheduler.alphas_cumprod[t])
        landing = scheduler.previous_timestep(t)
        a_prev = float(scheduler.alphas_cumprod[landing]) if landing >= 0 else 1.0
        want_prev, want_x0 = cfg_pp_reference(e_c, e_u, x, a, a_prev, lam)
        guided = ddim.CFGPlusPlus(conditional, unconditional, lam).predict(x, t_rows)
        out = scheduler.step(guided.output, t, x, renoise_model_output=guided.renoise)
        torch.testing.assert_close(out.prev_sample, want_prev, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out.pred_original_sample, want_x0, rtol=1e-12, atol=1e-12)
        paper = cfg_pp_step(guided.output, guided.renoise, x, a, a_prev)
        torch.testing.assert_close(paper[0], want_prev, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("prediction_type", ["sample", "v_prediction"])
def test_other_prediction_types_match_the_paper_form(prediction_type: str) -> None:
    scheduler = ddim.DDIMScheduler(clip_sample=False, prediction_type=prediction_type)
    scheduler.set_timesteps(20)
    g = torch.Generator().manual_seed(3)
    x, m_g, m_u, z = (torch.randn(3, 4, dtype=torch.float64, generator=g) for _ in range(4))
    t = int(scheduler.timesteps[7])
    a = float(scheduler.alphas_cumprod[t])
    a_prev = float(scheduler.alphas_cumprod[scheduler.previous_timestep(t)])
    out = scheduler.step(m_g, t, x, eta=0.6, variance_noise=z, renoise_model_output=m_u)
    want = cfg_pp_step(m_g, m_u, x, a, a_prev, eta=0.6, prediction_type=prediction_type, noise=z)
    torch.testing.assert_close(out.prev_sample, want[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.pred_original_sample, want[1], rtol=1e-10, atol=1e-10)


def test_lambda_zero_is_unconditional_ddim() -> None:
    scheduler, conditional, unconditional = models()
    x_T = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    plain = ddim.sample(unconditional, scheduler, noise=x_T, num_inference_steps=15)
    guided = ddim.sample(
        ddim.CFGPlusPlus(conditional, unconditional, 0.0), scheduler, noise=x_T, num_inference_steps=15
    )
    torch.testing.assert_close(guided, plain, rtol=1e-12, atol=1e-12)


def test_the_loop_equals_the_algorithm_on_the_exact_mixture() -> None:
    """The whole loop on the analytic conditional/unconditional pair against Algorithm 1 walked by hand."""
    scheduler, conditional, unconditional = models()
    lam = 0.7
    x_T = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    got = ddim.sample(ddim.CFGPlusPlus(conditional, unconditional, lam), scheduler, noise=x_T, num_inference_steps=12)
    grid = scheduler.timesteps.tolist()
    x = x_T
    for i, t in enumerate(grid):
        rows = torch.full((8,), t)
        a = float(scheduler.alphas_cumprod[t])
        a_prev = float(scheduler.alphas_cumprod[grid[i + 1]]) if i + 1 < len(grid) else 1.0
        x, _ = cfg_pp_reference(conditional(x, rows), unconditional(x, rows), x, a, a_prev, lam)
    torch.testing.assert_close(got, x, rtol=1e-10, atol=1e-10)
    # guided towards the conditional mean (1.5, -0.5) more than the unconditional loop is
    plain = ddim.sample(unconditional, scheduler, noise=x_T, num_inference_steps=12)
    target = torch.tensor([1.5, -0.5], dtype=torch.float64)
    assert (got - target).norm(dim=1).mean() < (plain - target).norm(dim=1).mean()


@pytest.mark.parametrize("method", ["edict", "bdia"])
def test_exact_inversion_round_trips_under_cfg_pp(method: str) -> None:
    scheduler, conditional, unconditional = models()
    guided = ddim.CFGPlusPlus(conditional, unconditional, 0.5)
    x0 = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    latent = ddim.invert(guided, scheduler, x0, num_inference_steps=10, method=method)
    back = ddim.sample_exact(guided, scheduler, latent)
    torch.testing.assert_close(back, x0, rtol=1e-9, atol=1e-9)


def test_ddim_inversion_under_cfg_pp_converges_with_fixed_point_iterations() -> None:
    scheduler, conditional, unconditional = models()
    guided = ddim.CFGPlusPlus(conditional, unconditional, 0.5)
    noise = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    x0 = ddim.sample(guided, scheduler, noise=noise, num_inference_steps=10)
    errors = []
    for iterations in (0, 30):
        x_T = ddim.invert(guided, scheduler, x0, num_inference_steps=10, fixed_point_iterations=iterations)
        back = ddim.sample(guided, scheduler, noise=x_T, num_inference_steps=10)
        errors.append(float((back - x0).abs().max()))
    assert errors[1] < 1e-5 and errors[1] < errors[0] / 10, errors


def test_bad_renoise_arguments_are_refused() -> None:
    scheduler = ddim.DDIMScheduler()
    scheduler.set_timesteps(10)
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="renoise_model_output shape"):
        scheduler.step(x, 901, x, renoise_model_output=torch.randn(3, 3))
    with pytest.raises(TypeError, match="renoise_model_output must be a floating-point tensor"):
        scheduler.step(x, 901, x, renoise_model_output=torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="use_clipped_model_output"):
        scheduler.step(x, 901, x, use_clipped_model_output=True, renoise_model_output=x)
    with pytest.raises(ValueError, match=r"guidance_scale=1.5 is out of range; allowed values are \[0, 1\]"):
        ddim.CFGPlusPlus(lambda x, t: x, lambda x, t: x, 1.5)


def test_the_log_prob_step_scores_the_cfg_pp_mean() -> None:
    scheduler = ddim.DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(10)
    g = torch.Generator().manual_seed(5)
    x, m_g, m_u, x_prev = (torch.randn(2, 3, dtype=torch.float64, generator=g) for _ in range(4))
    t = 501
    _, log_prob = ddim.ddim_step_with_logprob(
        scheduler, m_g, t, x, eta=1.0, prev_sample=x_prev, reduction="none", renoise_model_output=m_u
    )
    a = float(scheduler.alphas_cumprod[t])
    a_prev = float(scheduler.alphas_cumprod[max(t - 100, 0)])  # DDPO's clamped landing
    sigma = math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
    x0 = (x - math.sqrt(1 - a) * m_g) / math.sqrt(a)
    mean = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - sigma**2) * m_u
    want = -((x_prev - mean) ** 2) / (2 * sigma**2) - math.log(sigma) - 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(log_prob, want, rtol=1e-10, atol=1e-10)
