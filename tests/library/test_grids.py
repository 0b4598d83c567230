"""Timestep grids beyond diffusers: grid-based landing, custom grids, quadratic and original-code grids,
and per-sample timesteps in ``step``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ddim
from ddim.analytic import GaussianMixtureModel
from ddim.timesteps import original_ddim_timesteps, quadratic_timesteps

T = 1000
SPACINGS = ["leading", "trailing", "linspace", "quadratic"]


def point_mass_eps(scheduler: ddim.DDIMScheduler, mu: float):
    """Exact eps of data concentrated at mu: DDIM is exact for it, x_t = sqrt(a) mu + sqrt(1-a) eps0."""
    alphas = scheduler.alphas_cumprod.double()

    def model(x: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        a = alphas[t]
        return (x - a.sqrt() * mu) / (1 - a).sqrt()

    return model


# ----------------------------------------------------------------------------- the config option
def test_option_is_after_diffusers_arguments_and_defaults_to_diffusers_numbers() -> None:
    import inspect

    from diffusers import DDIMScheduler as Reference

    ours = list(inspect.signature(ddim.DDIMScheduler.__init__).parameters)[1:]
    theirs = list(inspect.signature(Reference.__init__).parameters)[1:]
    assert ours[: len(theirs)] == theirs
    assert ours[len(theirs)] == "prev_timestep_from_grid"
    scheduler = ddim.DDIMScheduler(timestep_spacing="linspace", clip_sample=False)
    assert scheduler.config.prev_timestep_from_grid is False
    reference = Reference(timestep_spacing="linspace", clip_sample=False)
    scheduler.set_timesteps(10)
    reference.set_timesteps(10)
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
    for t in scheduler.timesteps:
        ours_x = scheduler.step(eps, t, x).prev_sample
        theirs_x = reference.step(eps, t, x).prev_sample
        torch.testing.assert_close(ours_x, theirs_x, rtol=1e-6, atol=1e-6)


def test_option_is_saved_and_loaded(tmp_path) -> None:
    scheduler = ddim.DDIMScheduler(prev_timestep_from_grid=True, timestep_spacing="quadratic")
    scheduler.save_config(tmp_path)
    loaded = ddim.DDIMScheduler.from_pretrained(tmp_path)
    assert loaded.config.prev_timestep_from_grid is True
    assert loaded.config.timestep_spacing == "quadratic"
    assert ddim.DDIMScheduler.from_config(loaded.config).config.prev_timestep_from_grid is True
    with pytest.raises(TypeError, match="prev_timestep_from_grid"):
        ddim.DDIMScheduler(prev_timestep_from_grid="yes")


@settings(max_examples=40, deadline=None)
@given(spacing=st.sampled_from(SPACINGS), n=st.integers(1, T))
def test_every_step_lands_on_the_next_grid_point(spacing: str, n: int) -> None:
    scheduler = ddim.DDIMScheduler(timestep_spacing=spacing, prev_timestep_from_grid=True)
    scheduler.set_timesteps(n)
    grid = scheduler.timesteps.tolist()
    assert len(grid) == n == len(set(grid))
    landings = [scheduler.previous_timestep(t) for t in grid]
    assert landings == [*grid[1:], -1]


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("n", [7, 10, 33])
def test_grid_landing_is_exact_for_a_point_mass(spacing: str, n: int) -> None:
    """Each step of an exact model lands on abar of the next grid point; the last on abar = 1 (x = mu)."""
    scheduler = ddim.DDIMScheduler(timestep_spacing=spacing, prev_timestep_from_grid=True, clip_sample=False)
    scheduler.set_timesteps(n)
    mu, eps0 = 0.3, torch.linspace(-2, 2, 5, dtype=torch.float64)
    alphas = scheduler.alphas_cumprod.double()
    model = point_mass_eps(scheduler, mu)
    grid = scheduler.timesteps.tolist()
    x = alphas[grid[0]].sqrt() * mu + (1 - alphas[grid[0]]).sqrt() * eps0
    for i, t in enumerate(grid):
        x = scheduler.step(model(x, t), t, x).prev_sample
        a = alphas[grid[i + 1]] if i + 1 < n else torch.tensor(1.0, dtype=torch.float64)
        torch.testing.assert_close(x, a.sqrt() * mu + (1 - a).sqrt() * eps0, rtol=1e-9, atol=1e-9)


def test_diffusers_rule_misses_the_grid_for_linspace() -> None:
    """Without the option (diffusers' numbers) a linspace step lands on t - T // N, off the grid."""
    scheduler = ddim.DDIMScheduler(timestep_spacing="linspace")
    scheduler.set_timesteps(10)
    assert scheduler.timesteps.tolist()[:2] == [999, 888]
    assert scheduler.previous_timestep(999) == 899


# ----------------------------------------------------------------------------- quadratic grids
def test_quadratic_spacing_values() -> None:
    # floor(c i^2) with c = 999 / 81, worked by hand: 12.33 i^2 for i = 0..9.
    assert quadratic_timesteps(T, 10).tolist() == [999, 789, 604, 444, 308, 197, 111, 49, 12, 0]
    scheduler = ddim.DDIMScheduler(timestep_spacing="quadratic")
    scheduler.set_timesteps(10)
    assert scheduler.timesteps.tolist() == [999, 789, 604, 444, 308, 197, 111, 49, 12, 0]
    assert scheduler.previous_timestep(789) == 604  # quadratic always steps grid point to grid point


@settings(max_examples=40, deadline=None)
@given(total=st.integers(2, 2000), data=st.data())
def test_quadratic_grid_is_distinct_and_spans_the_range(total: int, data: st.DataObject) -> None:
    n = data.draw(st.integers(1, total))
    grid = quadratic_timesteps(total, n)
    assert len(grid) == n and grid[0] == total - 1
    assert (np.diff(grid) < 0).all()
    if n > 1:
        assert grid[-1] == 0
        for i, t in enumerate(grid[::-1].tolist()):
            quadratic = ((total - 1) * i * i) // ((n - 1) ** 2)  # floor(c i^2), c = (T - 1) / (N - 1)^2
            assert t >= max(quadratic, i)
            if (total - 1) * i >= (n - 1) ** 2:  # c i >= 1: the quadratic itself is distinct from here on
                assert t == quadratic


def test_original_code_grids() -> None:
    # ermongroup/ddim runners/diffusion.py: int(linspace(0, sqrt(0.8 T), S) ** 2), and range(0, T, T // S).
    assert original_ddim_timesteps(T, 10, "quad").tolist() == [0, 9, 39, 88, 158, 246, 355, 483, 632, 800]
    assert original_ddim_timesteps(T, 10, "uniform").tolist() == list(range(0, 1000, 100))
    grid = original_ddim_timesteps(T, 100, "quad")
    assert len(grid) == 100 and len(np.unique(grid)) < 100  # the original repeats small timesteps
    with pytest.raises(ValueError, match="skip_type"):
        original_ddim_timesteps(T, 10, "cubic")


def original_generalized_steps(x: torch.Tensor, seq: list[int], model, alphas: torch.Tensor) -> torch.Tensor:
    """The original code's eta = 0 loop over (t, next_t) = (seq[i], seq[i - 1] or -1), abar_{-1} = 1."""
    padded = torch.cat([torch.ones(1, dtype=torch.float64), alphas.double()])
    nexts = [-1, *seq[:-1]]
    for t, nt in zip(reversed(seq), reversed(nexts), strict=True):
        at, an = padded[t + 1], padded[nt + 1]
        et = model(x, t)
        x0 = (x - et * (1 - at).sqrt()) / at.sqrt()
        x = an.sqrt() * x0 + (1 - an).sqrt() * et
    return x


@pytest.mark.parametrize("steps", [10, 100])
def test_original_quad_setting_is_reproduced_with_the_deduplicated_grid(steps: int) -> None:
    scheduler = ddim.DDIMScheduler(clip_sample=False, set_alpha_to_one=True)
    model = GaussianMixtureModel(scheduler.alphas_cumprod, [[0.5, -0.5]], 0.3)
    x_t = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    seq = original_ddim_timesteps(T, steps, "quad").tolist()
    expected = original_generalized_steps(x_t, seq, lambda x, t: model(x, torch.tensor([t])), scheduler.alphas_cumprod)
    got = ddim.sample(model, scheduler, noise=x_t, timesteps=np.unique(seq)[::-1].copy(), progress=False)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- custom grids
def test_custom_grid_sets_timesteps_and_steps_between_its_points() -> None:
    scheduler = ddim.DDIMScheduler()
    scheduler.set_timesteps(timesteps=[999, 500, 20])
    assert scheduler.timesteps.tolist() == [999, 500, 20]
    assert scheduler.timesteps.dtype == torch.int64
    assert scheduler.num_inference_steps == 3
    assert [scheduler.previous_timestep(t) for t in (999, 500, 20)] == [500, 20, -1]
    scheduler.set_timesteps(3, timesteps=np.array([10, 5, 1]))
    assert scheduler.timesteps.tolist() == [10, 5, 1]
    scheduler.set_timesteps(timesteps=torch.tensor([4, 3]))
    assert scheduler.timesteps.tolist() == [4, 3]


@settings(max_examples=30, deadline=None)
@given(points=st.sets(st.integers(0, T - 1), min_size=1, max_size=40))
def test_any_custom_grid_is_stepped_point_to_point(points: set[int]) -> None:
    grid = sorted(points, reverse=True)
    scheduler = ddim.DDIMScheduler()
    scheduler.set_timesteps(timesteps=grid)
    assert scheduler.timesteps.tolist() == grid
    assert [scheduler.previous_timestep(t) for t in grid] == [*grid[1:], -1]


@pytest.mark.parametrize("n", [1, 8, 10, 50, 125, 1000])
def test_option_agrees_with_diffusers_where_diffusers_is_right(n: int) -> None:
    """leading spacing with N dividing T: t - T // N is the next grid point, so the option changes nothing."""
    plain, on_grid = ddim.DDIMScheduler(), ddim.DDIMScheduler(prev_timestep_from_grid=True)
    plain.set_timesteps(n)
    on_grid.set_timesteps(n)
    grid = plain.timesteps.tolist()
    assert grid == on_grid.timesteps.tolist()
    assert [plain.previous_timestep(t) for t in grid] == [on_grid.previous_timestep(t) for t in grid]


def test_diffusers_retrieve_timesteps_accepts_our_scheduler() -> None:
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps

    scheduler = ddim.DDIMScheduler()
    timesteps, n = retrieve_timesteps(scheduler, timesteps=[900, 600, 300, 0])
    assert timesteps.tolist() == [900, 600, 300, 0] and n == 4


@pytest.mark.parametrize(
    ("grid", "match"),
    [
        ([10, 20, 5], "strictly decreasing; got 10 followed by 20"),
        ([20, 10, 10], "strictly decreasing; got 10 followed by 10"),
        ([1000, 10], "1000, outside the allowed range"),
        ([10, -1], "-1, outside the allowed range"),
        ([], "non-empty"),
    ],
)
def test_bad_custom_grids_are_refused(grid: list[int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ddim.DDIMScheduler().set_timesteps(timesteps=np.array(grid, dtype=np.int64))


def test_custom_grid_type_and_count_errors() -> None:
    scheduler = ddim.DDIMScheduler()
    with pytest.raises(TypeError, match="timesteps must hold integers"):
        scheduler.set_timesteps(timesteps=[900.0, 100.0])
    with pytest.raises(ValueError, match="num_inference_steps=3 does not match the 2 custom timesteps"):
        scheduler.set_timesteps(3, timesteps=[900, 100])
    with pytest.raises(ValueError, match="needs num_inference_steps or timesteps"):
        scheduler.set_timesteps()


# ----------------------------------------------------------------------------- per-sample timesteps
@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    eta=st.sampled_from([0.0, 0.5, 1.0]),
    prediction_type=st.sampled_from(["epsilon", "sample", "v_prediction"]),
    clip=st.booleans(),
    batch=st.integers(1, 5),
)
def test_per_sample_timesteps_equal_stepping_each_row_alone(
    seed: int, eta: float, prediction_type: str, clip: bool, batch: int
) -> None:
    scheduler = ddim.DDIMScheduler(prediction_type=prediction_type, clip_sample=clip)
    scheduler.set_timesteps(20)
    g = torch.Generator().manual_seed(seed)
    grid = scheduler.timesteps
    t = grid[torch.randint(0, len(grid), (batch,), generator=g)]
    x = torch.randn(batch, 3, 4, generator=g)
    out = torch.randn(batch, 3, 4, generator=g)
    noise = torch.randn(batch, 3, 4, generator=g)
    together = scheduler.step(out, t, x, eta=eta, variance_noise=noise)
    for i in range(batch):
        alone = scheduler.step(out[i : i + 1], int(t[i]), x[i : i + 1], eta=eta, variance_noise=noise[i : i + 1])
        torch.testing.assert_close(together.prev_sample[i : i + 1], alone.prev_sample, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(
            together.pred_original_sample[i : i + 1], alone.pred_original_sample, rtol=1e-5, atol=1e-6
        )


def test_per_sample_timesteps_with_per_row_generators() -> None:
    scheduler = ddim.DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(50)
    t = torch.tensor([981, 501, 21])
    x = torch.randn(3, 2, 2, generator=torch.Generator().manual_seed(0))
    out = torch.randn(3, 2, 2, generator=torch.Generator().manual_seed(1))
    together = scheduler.step(out, t, x, eta=1.0, generator=[torch.Generator().manual_seed(s) for s in (5, 6, 7)])
    for i, s in enumerate((5, 6, 7)):
        alone = scheduler.step(
            out[i : i + 1], int(t[i]), x[i : i + 1], eta=1.0, generator=torch.Generator().manual_seed(s)
        )
        torch.testing.assert_close(together.prev_sample[i : i + 1], alone.prev_sample)


def test_per_sample_timestep_length_must_match_batch() -> None:
    scheduler = ddim.DDIMScheduler()
    scheduler.set_timesteps(10)
    with pytest.raises(ValueError, match="timestep has 2 entries; a 1-D timestep needs one per batch row"):
        scheduler.step(torch.zeros(3, 4), torch.tensor([901, 801]), torch.zeros(3, 4))


def test_scheduler_with_option_loads_into_diffusers() -> None:
    """Our config (with the extra key) still builds diffusers' scheduler, which ignores the key."""
    from diffusers import DDIMScheduler as Reference

    ours = ddim.DDIMScheduler(prev_timestep_from_grid=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = Reference.from_config(ours.config)
    assert reference.config.num_train_timesteps == T
