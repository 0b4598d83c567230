"""Named timestep grids: Align Your Steps' published schedules, their log-linear interpolation, and the
DDIM paper's quadratic grid, through ``named_timesteps``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ddim
from ddim.analytic import GaussianMixtureModel, gaussian_flow
from ddim.named_grids import (
    AYS_TIMESTEPS,
    NAMED_GRIDS,
    ays_alphas_cumprod,
    ays_noise_levels,
    distinct_descending,
    loglinear_interp,
    named_timesteps,
    nearest_timesteps,
    noise_levels,
)
from ddim.timesteps import spaced_timesteps

T = 1000
AYS = ["ays-sd15", "ays-sdxl"]
# NVIDIA's project page (research.nvidia.com/labs/toronto-ai/AlignYourSteps/howto.html): the 10-step
# schedules, 10 model calls then the end t = 0; diffusers' AysSchedules holds the same 10 calls.
PUBLISHED = {
    "ays-sd15": [999, 850, 736, 645, 545, 455, 343, 233, 124, 24],
    "ays-sdxl": [999, 845, 730, 587, 443, 310, 193, 116, 53, 13],
}
DIFFUSERS_KEYS = {"ays-sd15": "StableDiffusionTimesteps", "ays-sdxl": "StableDiffusionXLTimesteps"}
# The same page's noise levels at full precision, as ComfyUI copies them (comfy_extras/nodes_align_your_steps.py,
# NOISE_LEVELS "SD1" and "SDXL"): sigma_t of the 11 timesteps above under Stable Diffusion's schedule.
PUBLISHED_SIGMAS = {
    "ays-sd15": [14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092, 0.9642583904,
                 0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582],
    "ays-sdxl": [14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141, 0.5550693289,
                 0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582],
}  # fmt: skip


def stable_diffusion_scheduler() -> ddim.DDIMScheduler:
    """The scheduler of Stable Diffusion 1.5 / SDXL's ``scheduler_config.json`` (the AYS training schedule)."""
    return ddim.DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, set_alpha_to_one=False
    )


# ----------------------------------------------------------------------------- the published schedules
@pytest.mark.parametrize("name", AYS)
def test_ten_steps_reproduce_the_published_schedule(name: str) -> None:
    from diffusers.schedulers import AysSchedules

    grid = named_timesteps(name, 10)
    assert grid.dtype == np.int64 and grid.tolist() == PUBLISHED[name]
    assert grid.tolist() == AysSchedules[DIFFUSERS_KEYS[name]]
    assert list(AYS_TIMESTEPS[name]) == [*PUBLISHED[name], 0]


@pytest.mark.parametrize("name", AYS)
def test_noise_levels_are_the_published_ones(name: str) -> None:
    levels = ays_noise_levels(name, 10)
    np.testing.assert_allclose(levels, PUBLISHED_SIGMAS[name], rtol=0, atol=1e-5)
    assert np.array_equal(ays_alphas_cumprod(), stable_diffusion_scheduler().alphas_cumprod.double().numpy())


@pytest.mark.parametrize("name", AYS)
@pytest.mark.parametrize("m", [2, 3, 5])
def test_multiples_of_ten_steps_keep_every_published_timestep(name: str, m: int) -> None:
    """N = 10 m puts m - 1 log-linear points between published levels, which stay on the grid."""
    assert named_timesteps(name, 10 * m)[::m].tolist() == PUBLISHED[name]


def test_quadratic_name_is_the_quadratic_spacing() -> None:
    assert named_timesteps("ddim-quadratic", 10).tolist() == [999, 789, 604, 444, 308, 197, 111, 49, 12, 0]
    for total, n in [(1000, 1), (1000, 50), (1000, 1000), (500, 37), (2, 2)]:
        grid = named_timesteps("ddim-quadratic", n, num_train_timesteps=total)
        assert grid.tolist() == spaced_timesteps("quadratic", total, n).tolist()
    scheduler = ddim.DDIMScheduler(timestep_spacing="quadratic")
    scheduler.set_timesteps(25)
    assert scheduler.timesteps.tolist() == named_timesteps("ddim-quadratic", 25).tolist()


# ----------------------------------------------------------------------------- the interpolation rule
def test_loglinear_interp_of_a_geometric_sequence_is_geometric() -> None:
    values = 10.0 * 0.5 ** np.arange(11)
    for m in (1, 2, 4, 11, 37):
        expected = 10.0 * 0.5 ** (10 * np.arange(m) / max(m - 1, 1))
        np.testing.assert_allclose(loglinear_interp(values, m), expected, rtol=1e-12)
    uneven = np.array([8.0, 2.0, 1.0, 0.01])
    midpoints = loglinear_interp(uneven, 7)  # every other point a geometric mean of neighbours
    np.testing.assert_allclose(midpoints[::2], uneven, rtol=1e-12)
    np.testing.assert_allclose(midpoints[1::2], np.sqrt(uneven[:-1] * uneven[1:]), rtol=1e-12)


@pytest.mark.parametrize("name", AYS)
def test_twenty_steps_insert_the_geometric_mean_noise_level_between_published_steps(name: str) -> None:
    """Log-linear in sigma: the point halfway between two published levels is sqrt(sigma_k sigma_k+1)."""
    alphas = stable_diffusion_scheduler().alphas_cumprod.double().numpy()
    log_sigma = 0.5 * np.log((1 - alphas) / alphas)
    published = [*PUBLISHED[name], 0]
    halfway = 0.5 * (log_sigma[published[:-1]] + log_sigma[published[1:]])
    expected = np.abs(halfway[:, None] - log_sigma[None, :]).argmin(axis=1)
    grid = named_timesteps(name, 20)
    assert grid[1::2].tolist() == expected.tolist()
    if name == "ays-sd15":  # worked out: sqrt(14.6146 * 6.4746) = 9.7274; sigma_928 = 9.7015, sigma_929 = 9.7548
        assert grid[1] == 928 and abs(np.exp(log_sigma[928]) - 9.7015) < 1e-4


def test_nearest_timesteps_round_trip_every_training_timestep() -> None:
    alphas = ays_alphas_cumprod()
    sigmas = noise_levels(alphas)
    assert nearest_timesteps(sigmas, alphas).tolist() == list(range(T))
    between = np.sqrt(sigmas[[100, 500]] * sigmas[[101, 501]]) * np.array([0.999, 1.001])  # just off the midpoint
    assert nearest_timesteps(between, alphas).tolist() == [100, 501]


def test_distinct_descending_moves_colliding_points_up_only() -> None:
    assert distinct_descending(np.array([900, 40, 7, 3]), T).tolist() == [900, 40, 7, 3]
    assert distinct_descending(np.array([900, 3, 1, 0, 0, 0]), T).tolist() == [900, 4, 3, 2, 1, 0]
    assert distinct_descending(np.array([999, 999, 999, 2]), T).tolist() == [999, 998, 997, 2]
    assert distinct_descending(np.zeros(5, dtype=np.int64), 5).tolist() == [4, 3, 2, 1, 0]


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(AYS), n=st.integers(1, T), more=st.integers(1, T))
def test_interpolated_grids_are_valid_and_monotone_in_the_number_of_steps(name: str, n: int, more: int) -> None:
    grid = named_timesteps(name, n)
    assert grid.dtype == np.int64 and len(grid) == n == len(set(grid.tolist()))
    assert (np.diff(grid) < 0).all() and grid[-1] >= 0 and grid[0] == T - 1  # starts where the paper's does
    last_published = PUBLISHED[name][-1]  # the last call sits at level (N - 1) / N of the way to t = 0
    assert grid[-1] <= last_published if n >= 10 else grid[-1] >= last_published
    levels = ays_noise_levels(name, n)
    assert len(levels) == n + 1 and levels[-1] == pytest.approx(PUBLISHED_SIGMAS[name][-1], abs=1e-5)  # ends at t=0
    m = min(n + more, T)
    finer = named_timesteps(name, m)
    assert (finer[:n] >= grid).all()  # the i-th step from the top never moves down to less noise
    thresholds = np.arange(T + 1)
    for coarse_count, fine_count in [
        (np.searchsorted(-grid, -thresholds, side="right"), np.searchsorted(-finer, -thresholds, side="right")),
        (n - np.searchsorted(-grid, -thresholds, side="left"), m - np.searchsorted(-finer, -thresholds, side="left")),
    ]:
        assert (fine_count >= coarse_count).all()  # at least as many steps above (and below) every t


# ----------------------------------------------------------------------------- sampling on the grids
@pytest.mark.parametrize("name", NAMED_GRIDS)
def test_grids_run_through_set_timesteps_and_land_grid_point_to_grid_point(name: str) -> None:
    scheduler = stable_diffusion_scheduler()
    grid = named_timesteps(name, 10)
    scheduler.set_timesteps(timesteps=grid)
    assert scheduler.timesteps.tolist() == grid.tolist() and scheduler.num_inference_steps == 10
    assert [scheduler.previous_timestep(t) for t in grid.tolist()] == [*grid[1:].tolist(), -1]
    assert float(scheduler.final_alpha_cumprod) == float(scheduler.alphas_cumprod[0])  # the AYS end, t = 0


@pytest.mark.parametrize("name", NAMED_GRIDS)
def test_sampling_an_exact_gaussian_converges_at_first_order_on_the_grids(name: str) -> None:
    """DDIM (eta = 0) on an exact Gaussian model against the exact ODE flow from abar_999 to abar_0:
    the error halves with N doubled (DDIM is first order), so the interpolated grids refine consistently."""
    scheduler = stable_diffusion_scheduler()
    gaussian = GaussianMixtureModel(scheduler.alphas_cumprod, means=[[0.5]], stds=0.3)
    x_T = torch.randn(64, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    alphas = scheduler.alphas_cumprod.double()
    exact = gaussian_flow(x_T, float(alphas[-1]), float(alphas[0]), mean=0.5, std=0.3)
    errors = []
    for n in (5, 10, 40):
        grid = named_timesteps(name, n)
        out = ddim.sample(gaussian, scheduler, noise=x_T, timesteps=grid, dtype=torch.float64, progress=False)
        assert scheduler.timesteps.tolist() == grid.tolist()
        errors.append(float((out - exact).abs().max()))
    assert 0.4 < errors[1] / errors[0] < 0.65 and 0.2 < errors[2] / errors[1] < 0.35, errors


# ----------------------------------------------------------------------------- errors
def test_bad_arguments_name_the_parameter_the_value_and_what_is_allowed() -> None:
    allowed = r"allowed values are \['ays-sd15', 'ays-sdxl', 'ddim-quadratic'\]"
    with pytest.raises(ValueError, match=r"name='ays-sd21' is not supported; " + allowed):
        named_timesteps("ays-sd21", 10)
    with pytest.raises(ValueError, match=r"name='ays-svd' is not supported: Stable Video Diffusion.*" + allowed):
        named_timesteps("ays-svd", 10)
    with pytest.raises(TypeError, match=r"name must be a string"):
        named_timesteps(None, 10)  # type: ignore[arg-type]
    for name in NAMED_GRIDS:
        for n in (0, 1001):
            message = rf"num_inference_steps={n} is out of range; allowed values are 1..num_train_timesteps=1000"
            with pytest.raises(ValueError, match=message):
                named_timesteps(name, n)
        with pytest.raises(TypeError, match=r"num_inference_steps must be an int, got 2.5"):
            named_timesteps(name, 2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"num_train_timesteps=500 is not supported for name='ays-sdxl'; .*\[1000\]"):
        named_timesteps("ays-sdxl", 10, num_train_timesteps=500)
    with pytest.raises(ValueError, match=r"num_train_timesteps=0 is out of range; allowed values are >= 1"):
        named_timesteps("ddim-quadratic", 10, num_train_timesteps=0)
    with pytest.raises(ValueError, match=r"num_inference_steps=501 is out of range; .*num_train_timesteps=500"):
        named_timesteps("ddim-quadratic", 501, num_train_timesteps=500)
    with pytest.raises(ValueError, match=r"name='ddim-quadratic' is not supported; allowed values are \['ays-sd15'"):
        ays_noise_levels("ddim-quadratic", 10)
