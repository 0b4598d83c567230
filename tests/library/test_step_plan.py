"""The step plan is the one home of where a step lands: every reader agrees with the step itself.

The step's numbers are read back from the step (independent of the plan): with an epsilon model output of
0 and clipping off, x0 = x / sqrt(abar_from) and the noise-free x_prev = sqrt(abar_to) x0, so the alpha
pair is (x / x0)^2 and (x_prev / x0)^2; with eta = 1 and variance noise z = 1, sigma_t = x_prev(z) - x_prev(0).
"""

from __future__ import annotations

import math

import pytest
import torch

import ddim
from ddim.plan import landing_timesteps

SPACINGS = ("leading", "trailing", "linspace", "quadratic")
N = 30


def read_step(scheduler: ddim.DDIMScheduler, t: int) -> tuple[float, float, float]:
    """(abar_from, abar_to, sigma_t at eta = 1) of the step at t, read from its outputs (float64)."""
    x = torch.ones(1, 4, dtype=torch.float64)
    m = torch.zeros(1, 4, dtype=torch.float64)
    plain = scheduler.step(m, t, x, eta=1.0, variance_noise=torch.zeros_like(x))
    noisy = scheduler.step(m, t, x, eta=1.0, variance_noise=torch.ones_like(x))
    x0 = float(plain.pred_original_sample[0, 0])
    sigma = float(noisy.prev_sample[0, 0] - plain.prev_sample[0, 0])
    deterministic = scheduler.step(m, t, x, eta=0.0)
    return (1.0 / x0) ** 2, (float(deterministic.prev_sample[0, 0]) / x0) ** 2, sigma


@pytest.mark.parametrize("cls", [ddim.DDIMScheduler, ddim.DDIMParallelScheduler])
@pytest.mark.parametrize("from_grid", [False, True])
@pytest.mark.parametrize("spacing", SPACINGS)
def test_variance_and_landing_are_the_steps(cls: type, spacing: str, from_grid: bool) -> None:
    scheduler = cls(clip_sample=False, timestep_spacing=spacing, prev_timestep_from_grid=from_grid)
    scheduler.set_timesteps(N)
    alphas = scheduler.alphas_cumprod.double()
    for t in scheduler.timesteps.tolist():
        alpha_from, alpha_to, sigma = read_step(scheduler, t)
        landing = scheduler.previous_timestep(t)
        stated_to = float(alphas[landing]) if landing >= 0 else float(scheduler.final_alpha_cumprod)
        assert alpha_from == pytest.approx(float(alphas[t]), rel=1e-9)
        assert alpha_to == pytest.approx(stated_to, rel=1e-9)
        variance = float(scheduler._get_variance(t))
        # _get_variance is float32 (diffusers): 1 - abar_t / abar_prev loses ~2^-24 / (1 - abar_t / abar_prev) of itself
        rounding = 4 * 2.0**-24 / (1 - alpha_from / alpha_to) if alpha_to != alpha_from else 1.0
        assert sigma**2 == pytest.approx(variance, rel=1e-6 + rounding, abs=1e-12), (t, landing)
        assert float(scheduler._get_variance(torch.tensor([t]))[0]) == variance


def test_the_grid_landing_variance_of_the_reported_case() -> None:
    """trailing, N = 30, prev_timestep_from_grid: the step at 966 lands on the grid point 932, not 933."""
    scheduler = ddim.DDIMScheduler(timestep_spacing="trailing", prev_timestep_from_grid=True, clip_sample=False)
    scheduler.set_timesteps(30)
    alphas = scheduler.alphas_cumprod.double()
    assert scheduler.previous_timestep(966) == 932
    a, a_prev = float(alphas[966]), float(alphas[932])
    expected = (1 - a_prev) / (1 - a) * (1 - a / a_prev)  # eq. 16 written out
    assert float(scheduler._get_variance(966)) == pytest.approx(expected, rel=1e-5)
    assert read_step(scheduler, 966)[2] == pytest.approx(math.sqrt(expected), rel=1e-6)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_the_inverse_climbs_where_its_plan_says(spacing: str) -> None:
    scheduler = ddim.DDIMInverseScheduler(clip_sample=False, timestep_spacing=spacing, set_alpha_to_one=False)
    scheduler.set_timesteps(N)
    alphas = scheduler.alphas_cumprod.double()
    x = torch.ones(1, 4, dtype=torch.float64)
    m = torch.zeros(1, 4, dtype=torch.float64)
    for t in scheduler.timesteps.tolist():
        out = scheduler.step(m, t, x)
        x0 = float(out.pred_original_sample[0, 0])
        source = t - 1000 // N  # diffusers' inverse climbs from t - T // N (the initial alpha below 0)
        stated_from = float(alphas[source]) if source >= 0 else float(alphas[0])
        assert (1.0 / x0) ** 2 == pytest.approx(stated_from, rel=1e-9)
        assert (float(out.prev_sample[0, 0]) / x0) ** 2 == pytest.approx(float(alphas[t]), rel=1e-9)
        assert int(scheduler.plan.landing.timesteps[t]) == source


@pytest.mark.parametrize("from_grid", [False, True])
def test_the_parallel_batch_step_lands_where_the_plan_says(from_grid: bool) -> None:
    scheduler = ddim.DDIMParallelScheduler(
        clip_sample=False, timestep_spacing="trailing", prev_timestep_from_grid=from_grid, set_alpha_to_one=False
    )
    scheduler.set_timesteps(N)
    window = scheduler.timesteps
    alphas = scheduler.alphas_cumprod.double()
    x = torch.ones(len(window), 4, dtype=torch.float64)
    prev = scheduler.batch_step_no_noise(torch.zeros_like(x), window, x)
    for row, t in enumerate(window.tolist()):
        landing = scheduler.previous_timestep(t)
        # diffusers' batched step lands past 0 on abar = 1 whatever set_alpha_to_one; the grid option on the final alpha
        past_zero = float(scheduler.final_alpha_cumprod) if from_grid else 1.0
        stated = float(alphas[landing]) if landing >= 0 else past_zero
        alpha_from = float(alphas[t])
        assert float(prev[row, 0]) == pytest.approx(math.sqrt(stated / alpha_from), rel=1e-9)


def test_the_landing_rule_is_decided_once() -> None:
    import numpy as np

    grid = np.array([966, 932, 899], dtype=np.int64)
    offset = landing_timesteps("offset", grid, 1000)
    assert offset[966] == 966 - 1000 // 3 and offset[0] == -(1000 // 3)
    on_grid = landing_timesteps("grid", grid, 1000)
    assert on_grid[966] == 932 and on_grid[932] == 899 and on_grid[899] == -1


def test_set_timesteps_with_unchanged_arguments_reuses_the_plan() -> None:
    scheduler = ddim.DDIMScheduler()
    scheduler.set_timesteps(20)
    first = scheduler.plan
    scheduler.set_timesteps(10)
    scheduler.set_timesteps(20)
    assert scheduler.plan is first
    scheduler.config.timestep_spacing = "trailing"  # read at call time: a new plan
    scheduler.set_timesteps(20)
    assert scheduler.plan is not first and scheduler.timesteps[0] == 999
