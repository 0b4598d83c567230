"""``DDIMParallelScheduler``: the batched, noise-free step of parallel sampling against diffusers 0.42.1."""

from __future__ import annotations

from typing import Any

import diffusers
import pytest
import torch
import torch._dynamo
from test_differential import CONFIGS

import ddim
import ddim.diffusers

#: The differential suite's configurations (every constructor argument is covered).
PARALLEL_CONFIGS = CONFIGS
FP64_TOL = 1e-12


def widened_reference(config: dict[str, Any]) -> diffusers.DDIMParallelScheduler:
    """diffusers' parallel scheduler with float64 alpha tables (coefficients in float64, as ours)."""
    ref = diffusers.DDIMParallelScheduler(**config)
    ref.alphas_cumprod = ref.alphas_cumprod.double()
    ref.final_alpha_cumprod = ref.final_alpha_cumprod.double()
    return ref


def rows(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(n, 2, 4, 4, generator=gen, dtype=torch.float64) for _ in range(2))  # type: ignore[return-value]


def relative_error(ours: torch.Tensor, theirs: torch.Tensor, x: torch.Tensor, m: torch.Tensor, scale: float) -> float:
    """Largest |ours - theirs| relative to the size of the terms summed (``scale`` bounds the coefficients)."""
    return float((ours - theirs).abs().max()) / (scale * max(float(x.abs().max()), float(m.abs().max()), 1.0))


@pytest.mark.parametrize("index", range(len(PARALLEL_CONFIGS)))
@pytest.mark.parametrize("clipped", [False, True])
def test_batch_step_no_noise_equals_diffusers(index: int, clipped: bool) -> None:
    config, n = PARALLEL_CONFIGS[index]
    ours = ddim.DDIMParallelScheduler(**config)
    theirs = widened_reference(config)
    ours.set_timesteps(n)
    theirs.set_timesteps(n)
    timesteps = ours.timesteps
    x, m = rows(len(timesteps), index)
    got = ours.batch_step_no_noise(m, timesteps, x, use_clipped_model_output=clipped)
    expected = theirs.batch_step_no_noise(m, timesteps, x, use_clipped_model_output=clipped)
    a = ours.alphas_cumprod.double()[timesteps]
    scale = float((1 / a.sqrt()).max())  # the largest coefficient of x or m in x0 (eq. 9)
    finite = torch.isfinite(expected)
    assert torch.isfinite(got).all()
    assert relative_error(got[finite], expected[finite], x, m, scale) < FP64_TOL
    variance = ours._batch_get_variance(timesteps, timesteps - ours.config.num_train_timesteps // n)
    reference = diffusers.DDIMParallelScheduler(**config)._batch_get_variance(
        timesteps, timesteps - ours.config.num_train_timesteps // n
    )
    assert torch.equal(variance, reference)


@pytest.mark.parametrize("index", range(0, len(PARALLEL_CONFIGS), 10))
def test_step_equals_diffusers_parallel_step(index: int) -> None:
    config, n = PARALLEL_CONFIGS[index]
    ours, theirs = ddim.DDIMParallelScheduler(**config), widened_reference(config)
    ours.set_timesteps(n)
    theirs.set_timesteps(n)
    x, m = rows(3, index)
    for t in ours.timesteps.tolist():
        got = ours.step(m, t, x)
        expected = theirs.step(m, t, x)
        assert type(got) is ddim.DDIMParallelSchedulerOutput
        torch.testing.assert_close(got.prev_sample, expected.prev_sample, rtol=1e-9, atol=1e-9)


def test_each_row_is_the_sequential_step_except_diffusers_landing_past_zero() -> None:
    """diffusers' batched step lands past timestep 0 on abar = 1 whatever set_alpha_to_one; step does not."""
    for from_grid in (False, True):
        scheduler = ddim.DDIMParallelScheduler(set_alpha_to_one=False, prev_timestep_from_grid=from_grid)
        scheduler.set_timesteps(10)
        x, m = rows(10, 1)
        batched = scheduler.batch_step_no_noise(m, scheduler.timesteps, x)
        for i, t in enumerate(scheduler.timesteps.tolist()):
            sequential = scheduler.step(m[i : i + 1], t, x[i : i + 1]).prev_sample[0]
            if t == 0 and not from_grid:
                assert not torch.allclose(batched[i], sequential)
                clean = scheduler.step(m[i : i + 1], t, x[i : i + 1]).pred_original_sample[0]
                torch.testing.assert_close(batched[i], clean)  # abar = 1: x_prev is the (clipped) x0
            else:
                torch.testing.assert_close(batched[i], sequential, rtol=0, atol=0)


def test_grid_landing_is_each_rows_next_grid_point() -> None:
    scheduler = ddim.DDIMParallelScheduler(timestep_spacing="trailing", prev_timestep_from_grid=True)
    scheduler.set_timesteps(7)  # 1000 / 7 is not an integer: t - T // N leaves the grid
    grid = scheduler.timesteps.tolist()
    x, m = rows(len(grid), 2)
    batched = scheduler.batch_step_no_noise(m, scheduler.timesteps, x)
    alphas = scheduler.alphas_cumprod.double()
    for i, t in enumerate(grid):
        a = alphas[t]
        a_prev = alphas[grid[i + 1]] if i + 1 < len(grid) else torch.tensor(1.0, dtype=torch.float64)
        x0 = ((x[i] - (1 - a).sqrt() * m[i]) / a.sqrt()).clamp(-1, 1)
        torch.testing.assert_close(batched[i], a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * m[i])


def test_eta_gives_the_steps_mean() -> None:
    """diffusers allows only eta = 0 here; eta > 0 gives the mean the pipeline adds its noise to."""
    scheduler = ddim.DDIMParallelScheduler()
    scheduler.set_timesteps(20)
    x, m = rows(4, 3)
    timesteps = scheduler.timesteps[[0, 5, 10, 19]]
    batched = scheduler.batch_step_no_noise(m, timesteps, x, eta=0.7)
    for i, t in enumerate(timesteps.tolist()):
        mean = scheduler.step(m[i : i + 1], t, x[i : i + 1], eta=0.7, variance_noise=torch.zeros(1, 2, 4, 4))
        torch.testing.assert_close(batched[i], mean.prev_sample[0], rtol=0, atol=0)


def test_batch_step_compiles_to_one_graph_without_host_reads() -> None:
    scheduler = ddim.DDIMParallelScheduler(clip_sample=True)
    scheduler.set_timesteps(10)
    x, m = rows(3, 4)
    timesteps = scheduler.timesteps[[0, 4, 9]]
    torch._dynamo.reset()
    compiled = torch.compile(scheduler.batch_step_no_noise, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(m, timesteps, x), scheduler.batch_step_no_noise(m, timesteps, x))


def test_batch_step_errors_name_the_argument() -> None:
    scheduler = ddim.DDIMParallelScheduler()
    x, m = rows(2, 5)
    with pytest.raises(ValueError, match="before set_timesteps"):
        scheduler.batch_step_no_noise(m, torch.tensor([1, 2]), x)
    scheduler.set_timesteps(10)
    with pytest.raises(ValueError, match="timestep has 3 entries"):
        scheduler.batch_step_no_noise(m, torch.tensor([901, 801, 701]), x)
    with pytest.raises(TypeError, match="integer tensor"):
        scheduler.batch_step_no_noise(m, torch.tensor([901.0, 801.0]), x)
    with pytest.raises(ValueError, match="timestep contains 1000"):
        scheduler.batch_step_no_noise(m, torch.tensor([1000, 801]), x)
    with pytest.raises(ValueError, match=r"eta=-0\.5 is out of range"):
        scheduler.batch_step_no_noise(m, torch.tensor([901, 801]), x, eta=-0.5)
    with pytest.raises(TypeError, match="floating-point"):
        scheduler.batch_step_no_noise(m, torch.tensor([901, 801]), x.long())
    with pytest.raises(ValueError, match="prev_t contains 1000"):
        scheduler._batch_get_variance(torch.tensor([5]), torch.tensor([1000]))


def test_diffusers_subclass_is_diffusers_class_with_our_numbers() -> None:
    wrapped = ddim.diffusers.DDIMParallelScheduler(set_alpha_to_one=False)
    core = ddim.DDIMParallelScheduler(set_alpha_to_one=False)
    assert isinstance(wrapped, diffusers.DDIMParallelScheduler) and wrapped._is_ode_scheduler
    for scheduler in (wrapped, core):
        scheduler.set_timesteps(10)
    x, m = rows(10, 6)
    assert torch.equal(
        wrapped.batch_step_no_noise(m, wrapped.timesteps, x), core.batch_step_no_noise(m, core.timesteps, x)
    )
    output = wrapped.step(m, 901, x)
    assert type(output) is diffusers.schedulers.scheduling_ddim_parallel.DDIMParallelSchedulerOutput
    assert torch.equal(output.prev_sample, core.step(m, 901, x).prev_sample)
