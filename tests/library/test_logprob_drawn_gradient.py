"""The log-prob gradient of a step whose x_prev ``ddim_step_with_logprob`` draws itself, against the analytic one.

DDPO scores the drawn x_prev as data: with x_prev ~ N(mu(m), sigma^2), the gradient of
log p = -(x_prev - mu)^2 / (2 sigma^2) - log sigma - log sqrt(2 pi) with respect to the model output m is
(x_prev - mu) / sigma^2 * dmu/dm. For an epsilon model without clipping, mu (DDIM paper, eq. 12) is
sqrt(abar_prev) (x - sqrt(1 - abar_t) m) / sqrt(abar_t) + sqrt(1 - abar_prev - sigma^2) m, so
dmu/dm = sqrt(1 - abar_prev - sigma^2) - sqrt(abar_prev) sqrt(1 - abar_t) / sqrt(abar_t), a constant.
A draw that is not detached makes x_prev - mu independent of m and the gradient exactly 0.
The alphas come from diffusers' scheduler, the formulas are written out here.
"""

from __future__ import annotations

import math

import diffusers
import pytest
import torch

import ddim
from ddim import ddim_step_with_logprob

SHAPE = (2, 3, 4, 4)
STEPS = 10


def analytic_gradient(
    x: torch.Tensor, m: torch.Tensor, drawn: torch.Tensor, a: float, a_prev: float, eta: float
) -> torch.Tensor:
    """d/dm of the summed Gaussian log-density of ``drawn`` around the eta-step's mean (module doc)."""
    sigma = eta * math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
    direction = math.sqrt(1 - a_prev - sigma**2)
    mean = math.sqrt(a_prev) * (x - math.sqrt(1 - a) * m) / math.sqrt(a) + direction * m
    slope = direction - math.sqrt(a_prev) * math.sqrt(1 - a) / math.sqrt(a)
    return (drawn - mean) / sigma**2 * slope


@pytest.mark.parametrize(("t", "eta"), [(500, 1.0), (800, 0.5), (100, 0.8)])
def test_gradient_with_a_drawn_sample_is_the_analytic_gaussian_gradient(t: int, eta: float) -> None:
    ours = ddim.DDIMScheduler(clip_sample=False)
    ours.set_timesteps(STEPS)
    table = diffusers.DDIMScheduler(clip_sample=False).alphas_cumprod.double()
    a, a_prev = float(table[t]), float(table[max(t - 1000 // STEPS, 0)])  # DDPO's clamped landing
    gen = torch.Generator().manual_seed(t)
    x = torch.randn(SHAPE, generator=gen, dtype=torch.float64)
    m = torch.randn(SHAPE, generator=gen, dtype=torch.float64).requires_grad_(True)
    drawn, log_prob = ddim_step_with_logprob(
        ours, m, t, x, eta, generator=torch.Generator().manual_seed(1), reduction="sum"
    )
    log_prob.sum().backward()
    assert m.grad is not None
    expected = analytic_gradient(x, m.detach(), drawn.detach(), a, a_prev, eta)
    assert float(expected.abs().max()) > 0.1  # a gradient that is not close to 0 anywhere it must not be
    torch.testing.assert_close(m.grad, expected, rtol=1e-5, atol=1e-6)


def test_gradient_of_the_mean_reduction_is_the_sums_over_the_row_size() -> None:
    ours = ddim.DDIMScheduler(clip_sample=False)
    ours.set_timesteps(STEPS)
    table = diffusers.DDIMScheduler(clip_sample=False).alphas_cumprod.double()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(SHAPE, generator=gen, dtype=torch.float64)
    m = torch.randn(SHAPE, generator=gen, dtype=torch.float64).requires_grad_(True)
    drawn, log_prob = ddim_step_with_logprob(ours, m, 300, x, 1.0, generator=torch.Generator().manual_seed(2))
    log_prob.sum().backward()
    assert m.grad is not None
    expected = analytic_gradient(x, m.detach(), drawn.detach(), float(table[300]), float(table[200]), 1.0)
    torch.testing.assert_close(m.grad, expected / math.prod(SHAPE[1:]), rtol=1e-5, atol=1e-8)
