"""Property tests over hostile inputs: every call returns finite output equal to the paper-form step
(``ddim.ddim_step``), or raises ``ValueError``/``TypeError`` naming the parameter at fault."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ddim import DDIMScheduler, ddim_step

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REALS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.integers(-3, 3),
    st.sampled_from(["0.1", None, True]),
)
FLAGS = st.one_of(st.booleans(), st.sampled_from([0, 1, "yes", None]))
INTEGER_DTYPES = [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.uint16]


def as_timesteps(values: list[int], dtype: torch.dtype) -> torch.Tensor:
    """``values`` as a tensor of ``dtype`` where that dtype holds them all, else as int64."""
    info = torch.iinfo(dtype)
    fits = all(info.min <= v <= info.max for v in values)
    return torch.tensor(values).to(dtype) if fits else torch.tensor(values)


def raises_naming(names: list[str], call: Any) -> Any:
    """Run ``call``; if it raises, the error must be a ValueError/TypeError naming one of ``names``."""
    try:
        result = call()
    except (ValueError, TypeError) as error:
        assert any(name in str(error) for name in names), (names, str(error))
        event(f"refused: {type(error).__name__}")
        return None
    event("returned")
    return result


VALID_CONFIG: dict[str, Any] = {
    "beta_start": st.floats(1e-5, 0.05),
    "beta_end": st.floats(0.005, 1.0),
    "beta_schedule": st.sampled_from(["linear", "scaled_linear", "squaredcos_cap_v2"]),
    "clip_sample": st.booleans(),
    "clip_sample_range": st.floats(0.1, 5),
    "sample_max_value": st.floats(0.5, 5),
    "dynamic_thresholding_ratio": st.floats(0.5, 1.0),
    "rescale_betas_zero_snr": st.booleans(),
    "num_train_timesteps": st.integers(2, 1200),
}
HOSTILE_CONFIG: dict[str, Any] = {
    "beta_start": REALS,
    "beta_end": REALS,
    "beta_schedule": st.sampled_from(["cosine", 3, None]),
    "clip_sample": FLAGS,
    "clip_sample_range": REALS,
    "sample_max_value": REALS,
    "dynamic_thresholding_ratio": REALS,
    "rescale_betas_zero_snr": FLAGS,
    "num_train_timesteps": st.one_of(st.integers(-2, 1), st.sampled_from([10.0, True, "1000"])),
}


@SETTINGS
@given(data=st.data(), corrupted=st.sets(st.sampled_from(sorted(VALID_CONFIG)), max_size=2))
def test_constructor_builds_finite_tables_or_names_the_argument(data: st.DataObject, corrupted: set[str]) -> None:
    config = {
        name: data.draw(HOSTILE_CONFIG[name] if name in corrupted else valid, label=name)
        for name, valid in VALID_CONFIG.items()
    }
    scheduler = raises_naming(list(config), lambda: DDIMScheduler(**config))
    if scheduler is None:
        return
    assert bool(((scheduler.betas > 0) & (scheduler.betas <= 1)).all())
    alphas = scheduler.alphas_cumprod
    assert bool(torch.isfinite(alphas).all()) and bool(((alphas >= 0) & (alphas <= 1)).all())


@SETTINGS
@given(
    num_inference_steps=st.one_of(st.integers(-3, 1100), st.sampled_from([2.5, True, None, "10"])),
    spacing=st.sampled_from(["leading", "trailing", "linspace", "quadratic"]),
    steps_offset=st.integers(0, 3),
)
def test_set_timesteps_gives_a_valid_grid_or_names_the_argument(
    num_inference_steps: Any, spacing: str, steps_offset: int
) -> None:
    scheduler = DDIMScheduler(timestep_spacing=spacing, steps_offset=steps_offset)
    done = raises_naming(
        ["num_inference_steps", "steps_offset"], lambda: scheduler.set_timesteps(num_inference_steps) or True
    )
    if done is None:
        return
    grid = scheduler.timesteps
    assert len(grid) == num_inference_steps
    assert bool((grid >= 0).all()) and bool((grid < 1000).all()) and bool((grid[1:] < grid[:-1]).all())


@SETTINGS
@given(
    prediction_type=st.sampled_from(["epsilon", "sample", "v_prediction"]),
    transform=st.sampled_from(["none", "clip", "threshold"]),
    spacing=st.sampled_from(["leading", "trailing", "linspace"]),
    n=st.integers(1, 60),
    index=st.integers(0, 59),
    eta=st.one_of(st.floats(-1, 2), st.sampled_from([float("nan"), float("inf"), -0.0, "0.5"])),
    timestep_kind=st.sampled_from(["int", "tensor", "per_row", "out_of_range"]),
    timestep_dtype=st.sampled_from(INTEGER_DTYPES),
    sample_dtype=st.sampled_from([torch.float64, torch.float32, torch.int64]),
    batch=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_step_equals_the_paper_step_or_names_the_argument(
    prediction_type: str,
    transform: str,
    spacing: str,
    n: int,
    index: int,
    eta: Any,
    timestep_kind: str,
    timestep_dtype: torch.dtype,
    sample_dtype: torch.dtype,
    batch: int,
    seed: int,
) -> None:
    options: dict[str, Any] = {"none": {"clip_sample": False}, "clip": {"clip_sample": True}}.get(
        transform, {"thresholding": True, "clip_sample": False}
    )
    scheduler = DDIMScheduler(prediction_type=prediction_type, timestep_spacing=spacing, **options)
    scheduler.set_timesteps(n)
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(batch, 2, 3, generator=g, dtype=torch.float64) * 2).to(sample_dtype)
    m = torch.randn(batch, 2, 3, generator=g, dtype=torch.float64).to(sample_dtype)
    z = torch.randn(batch, 2, 3, generator=g, dtype=torch.float64).to(sample_dtype)
    grid = scheduler.timesteps.tolist()
    rows = [grid[(index + r) % len(grid)] for r in range(batch)]
    t: Any
    if timestep_kind == "int":
        t = rows[0]
        rows = [t] * batch
    elif timestep_kind == "out_of_range":
        t = 1000 + index
    elif timestep_kind == "tensor":
        t = as_timesteps([rows[0]], timestep_dtype).reshape(())
        rows = [rows[0]] * batch
    else:
        t = as_timesteps(rows, timestep_dtype)
    out = raises_naming(
        ["eta", "timestep", "sample", "model_output"],
        lambda: scheduler.step(m, t, x, eta=eta, variance_noise=z),
    )
    if out is None:
        return
    assert sample_dtype != torch.int64 and timestep_kind != "out_of_range"
    assert isinstance(eta, (int, float)) and math.isfinite(eta) and eta >= 0
    alphas = scheduler.alphas_cumprod.double()
    landing = [scheduler.previous_timestep(r) for r in rows]
    alpha_t = alphas[rows].reshape(-1, 1, 1)
    alpha_prev = torch.tensor(
        [float(alphas[s]) if s >= 0 else float(scheduler.final_alpha_cumprod) for s in landing], dtype=torch.float64
    ).reshape(-1, 1, 1)
    expected_prev, expected_x0 = ddim_step(
        m.double(),
        x.double(),
        alpha_t,
        alpha_prev,
        eta=float(eta),
        prediction_type=prediction_type,
        clip_sample_range=1.0 if transform == "clip" else None,
        thresholding_ratio=0.995 if transform == "threshold" else None,
        noise=z.double(),
    )
    tolerance = 1e-9 if sample_dtype == torch.float64 else 1e-4
    if eta <= 1:
        assert bool(torch.isfinite(out.prev_sample).all())
    scale = max(1.0, float(expected_prev.abs().max()))
    torch.testing.assert_close(out.prev_sample.double(), expected_prev, rtol=0, atol=tolerance * scale, equal_nan=True)
    torch.testing.assert_close(out.pred_original_sample.double(), expected_x0, rtol=0, atol=tolerance * scale)


@SETTINGS
@given(
    sample_dtype=st.sampled_from([torch.float32, torch.float64, torch.int64, torch.int32, torch.bool]),
    noise_dtype=st.sampled_from([torch.float32, torch.float64, torch.int64]),
    timestep_dtype=st.sampled_from([*INTEGER_DTYPES, torch.float32]),
    count=st.integers(0, 4),
    value=st.integers(-2, 1002),
    batch=st.integers(1, 3),
    noise_rows=st.sampled_from([None, 1, 5]),
)
def test_add_noise_and_get_velocity_are_the_forward_process_or_name_the_argument(
    sample_dtype: torch.dtype,
    noise_dtype: torch.dtype,
    timestep_dtype: torch.dtype,
    count: int,
    value: int,
    batch: int,
    noise_rows: int | None,
) -> None:
    scheduler = DDIMScheduler()
    x = (torch.randn(batch, 4, dtype=torch.float64) * 3).to(sample_dtype)
    noise = torch.randn(noise_rows or batch, 4, dtype=torch.float64).to(noise_dtype)
    steps = [value] * count
    t = (
        as_timesteps(steps, timestep_dtype)
        if timestep_dtype != torch.float32
        else torch.tensor(steps, dtype=torch.float32)
    )
    for method, names in (
        (scheduler.add_noise, ["original_samples", "noise", "timestep"]),
        (scheduler.get_velocity, ["sample", "noise", "timestep"]),
    ):
        out = raises_naming(names, lambda method=method: method(x, noise, t))
        if out is None:
            continue
        assert x.is_floating_point() and noise.is_floating_point() and count in (1, batch) and 0 <= value < 1000
        a = float(scheduler.alphas_cumprod[value])
        x64, n64 = x.double(), noise.double()
        expected = (
            math.sqrt(a) * x64 + math.sqrt(1 - a) * n64
            if method == scheduler.add_noise
            else math.sqrt(a) * n64 - math.sqrt(1 - a) * x64
        )
        assert out.dtype == x.dtype and bool(torch.isfinite(out).all())
        torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", INTEGER_DTYPES)
def test_every_integer_timestep_dtype_steps_like_int64(dtype: torch.dtype) -> None:
    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(10)
    x = torch.randn(2, 3)
    want = scheduler.step(x, torch.tensor([100, 20]), x, eta=0.5, variance_noise=x)
    got = scheduler.step(x, torch.tensor([100, 20]).to(dtype), x, eta=0.5, variance_noise=x)
    torch.testing.assert_close(got.prev_sample, want.prev_sample, rtol=0, atol=0)
    noisy = scheduler.add_noise(x, x, torch.tensor([100, 20]).to(dtype))
    torch.testing.assert_close(noisy, scheduler.add_noise(x, x, torch.tensor([100, 20])), rtol=0, atol=0)


def test_integer_samples_are_refused_not_truncated() -> None:
    scheduler = DDIMScheduler()
    ints = 3 * torch.ones(2, 4, dtype=torch.long)
    with pytest.raises(TypeError, match="original_samples must be a floating-point tensor"):
        scheduler.add_noise(ints, torch.ones(2, 4), torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="sample must be a floating-point tensor"):
        scheduler.get_velocity(ints, torch.ones(2, 4), torch.tensor([1, 2]))
    scheduler.set_timesteps(10)
    with pytest.raises(TypeError, match="sample must be a floating-point tensor"):
        scheduler.step(torch.ones(2, 4), 900, ints)
    with pytest.raises(ValueError, match="timesteps has 3 entries"):
        scheduler.add_noise(torch.ones(2, 4), torch.ones(2, 4), torch.tensor([1, 2, 3]))
