"""``ddim_step_with_logprob``'s promises at the edges: one value per batch row for every sample shape, and
``ValueError`` (never NaN) wherever sigma^2 is not a positive normal number at a host-readable timestep."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ddim
from ddim import ddim_step_with_logprob


def scheduler_of(steps: int = 10, **config: object) -> ddim.DDIMScheduler:
    scheduler = ddim.DDIMScheduler(clip_sample=False, **config)  # type: ignore[arg-type]
    scheduler.set_timesteps(steps)
    return scheduler


def gaussian_log_density(x: torch.Tensor, mean: torch.Tensor, sigma: float) -> torch.Tensor:
    """log N(x; mean, sigma^2) per element, written out."""
    return -((x - mean) ** 2) / (2 * sigma * sigma) - math.log(sigma) - 0.5 * math.log(2 * math.pi)


@settings(max_examples=30, deadline=None)
@given(
    shape=st.sampled_from([(1,), (5,), (4, 3), (2, 1), (3, 2, 4, 4), (1, 1, 2, 2)]),
    reduction=st.sampled_from(["mean", "sum"]),
    seed=st.integers(0, 2**16),
)
def test_property_reductions_give_one_value_per_row_for_every_shape(
    shape: tuple[int, ...], reduction: str, seed: int
) -> None:
    scheduler = scheduler_of()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    m = torch.randn(shape, generator=g, dtype=torch.float64)
    scored = x + 0.2 * torch.randn(shape, generator=g, dtype=torch.float64)
    _, each = ddim_step_with_logprob(scheduler, m, 501, x, 1.0, prev_sample=scored, reduction="none")
    _, reduced = ddim_step_with_logprob(scheduler, m, 501, x, 1.0, prev_sample=scored, reduction=reduction)  # type: ignore[arg-type]
    assert reduced.shape == (shape[0],)
    flat = each.reshape(shape[0], -1)
    expected = flat.mean(dim=1) if reduction == "mean" else flat.sum(dim=1)
    torch.testing.assert_close(reduced, expected, rtol=1e-12, atol=1e-12)
    # each row alone gives its own value: no row depends on another (a whole-batch reduction would)
    _, alone = ddim_step_with_logprob(scheduler, m[:1], 501, x[:1], 1.0, prev_sample=scored[:1], reduction=reduction)  # type: ignore[arg-type]
    torch.testing.assert_close(reduced[:1], alone, rtol=1e-12, atol=1e-12)


def test_one_dimensional_sample_scores_each_scalar_action_as_its_own_row() -> None:
    scheduler = scheduler_of()
    x = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    m = torch.tensor([0.1, 0.3, -0.2], dtype=torch.float64)
    scored = torch.tensor([0.4, -0.7, 1.5], dtype=torch.float64)
    mean = scheduler.step(m, 501, x, eta=1.0, variance_noise=torch.zeros_like(x)).prev_sample
    a_t, a_prev = (float(scheduler.alphas_cumprod[t]) for t in (501, 401))  # previous timestep 501 - 1000 // 10
    sigma = math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))  # DDIM eq. 16, eta = 1
    _, each = ddim_step_with_logprob(scheduler, m, 501, x, 1.0, prev_sample=scored, reduction="none")
    for reduction in ("mean", "sum"):
        _, value = ddim_step_with_logprob(scheduler, m, 501, x, 1.0, prev_sample=scored, reduction=reduction)  # type: ignore[arg-type]
        assert value.shape == (3,)
        torch.testing.assert_close(value, each)
    torch.testing.assert_close(each, gaussian_log_density(scored, mean, sigma))


def test_an_eta_so_small_that_sigma_squared_underflows_raises_instead_of_nan() -> None:
    scheduler = scheduler_of()
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    m = torch.randn(2, 3, generator=torch.Generator().manual_seed(1))
    _, fine = ddim_step_with_logprob(scheduler, m, 501, x, 1e-10, generator=torch.Generator().manual_seed(2))
    assert bool(fine.isfinite().all())
    for eta in (1e-30, 1e-300, 5e-324):
        with pytest.raises(
            ValueError,
            match=r"sigma is 0 at timestep=501 in torch\.float32 \(sigma=.*: sigma\^2 is below its smallest normal",
        ):
            ddim_step_with_logprob(scheduler, m, 501, x, eta)
        with pytest.raises(ValueError, match="no log-density"):
            ddim_step_with_logprob(scheduler, m, 501, x, eta, prev_sample=x)
    x64, m64 = x.double(), m.double()
    _, fine64 = ddim_step_with_logprob(scheduler, m64, 501, x64, 1e-30, prev_sample=x64 + 1e-32)
    assert bool(fine64.isfinite().all())  # representable in float64: scored, not refused
    with pytest.raises(ValueError, match=r"in torch\.float64 \(sigma=[0-9.e-]+: sigma\^2 is below"):
        ddim_step_with_logprob(scheduler, m64, 501, x64, 1e-300)


def test_a_cpu_timestep_tensor_with_a_zero_sigma_entry_raises_like_the_int_timestep() -> None:
    unit = scheduler_of()  # set_alpha_to_one: the unclamped last step lands on abar = 1, where sigma = 0
    x = torch.randn(3, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    m = torch.randn(3, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with pytest.raises(ValueError, match=r"sigma is 0 at timestep=0 in torch\.float64"):
        ddim_step_with_logprob(unit, m, 0, x, 1.0, clamp_prev_timestep=False)
    with pytest.raises(ValueError, match=r"sigma is 0 at timestep=0 \(batch row 1\)"):
        ddim_step_with_logprob(unit, m, torch.tensor([501, 0, 301]), x, 1.0, clamp_prev_timestep=False)
    with pytest.raises(ValueError, match=r"sigma is 0 at timestep=0 in torch\.float64"):
        ddim_step_with_logprob(unit, m, torch.tensor(0), x, 1.0, clamp_prev_timestep=False)
    _, fine = ddim_step_with_logprob(unit, m, torch.tensor([501, 101, 301]), x, 1.0, clamp_prev_timestep=False)
    assert bool(fine.isfinite().all())
