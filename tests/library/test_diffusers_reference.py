"""diffusers' own DDIM test expectations, rebuilt against ``ddim.DDIMScheduler``.

Source of every expected number: huggingface/diffusers, ``tests/schedulers/test_scheduler_ddim.py``
(``DDIMSchedulerTest``) and the helpers of ``tests/schedulers/test_schedulers.py``
(``SchedulerCommonTest``: dummy model, deterministic dummy sample and noise, ``check_over_configs``,
``check_over_forward``). The helpers below are written from their described behaviour; tolerances are
theirs (1e-2 on sums, 1e-3 on means, 1e-5 on variances and on save/load equality).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from ddim import DDIMScheduler
from ddim.coefficients import ddim_variance

BATCH, CHANNELS, HEIGHT, WIDTH = 4, 3, 8, 8


def base_config(**overrides: Any) -> dict[str, Any]:
    """``DDIMSchedulerTest.get_scheduler_config``: the defaults spelled out, clip_sample on."""
    config: dict[str, Any] = {
        "num_train_timesteps": 1000,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "clip_sample": True,
    }
    config.update(overrides)
    return config


def deterministic_ramp(reverse: bool = False) -> torch.Tensor:
    """0, 1, ..., n-1 (reversed for the noise) / n laid out as (C, H, W, B) and moved to (B, C, H, W)."""
    count = BATCH * CHANNELS * HEIGHT * WIDTH
    values = torch.arange(count)
    if reverse:
        values = values.flip(-1)
    return (values.reshape(CHANNELS, HEIGHT, WIDTH, BATCH) / count).permute(3, 0, 1, 2)


def dummy_model(sample: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
    """The reference dummy model: sample * t / (t + 1)."""
    if isinstance(t, torch.Tensor):
        t = t.reshape(-1, *([1] * (sample.ndim - 1))).to(sample.dtype)
    return sample * t / (t + 1)


def full_loop(**overrides: Any) -> torch.Tensor:
    """``DDIMSchedulerTest.full_loop``: 10 steps, eta 0, from the deterministic ramp."""
    scheduler = DDIMScheduler(**base_config(**overrides))
    scheduler.set_timesteps(10)
    sample = deterministic_ramp()
    for t in scheduler.timesteps:
        sample = scheduler.step(dummy_model(sample, t), t, sample, 0.0).prev_sample
    return sample


@pytest.mark.parametrize(
    ("overrides", "expected_sum", "expected_mean"),
    [
        ({}, 172.0067, 0.223967),  # test_full_loop_no_noise
        ({"prediction_type": "v_prediction"}, 52.5302, 0.0684),  # test_full_loop_with_v_prediction
        ({"set_alpha_to_one": True, "beta_start": 0.01}, 149.8295, 0.1951),  # ..._with_set_alpha_to_one
        ({"set_alpha_to_one": False, "beta_start": 0.01}, 149.0784, 0.1941),  # ..._with_no_set_alpha_to_one
    ],
)
def test_full_loop(overrides: dict[str, Any], expected_sum: float, expected_mean: float) -> None:
    sample = full_loop(**overrides)
    assert abs(sample.abs().sum().item() - expected_sum) < 1e-2
    assert abs(sample.abs().mean().item() - expected_mean) < 1e-3


def test_full_loop_with_noise() -> None:
    """test_full_loop_with_noise: add_noise at the 9th grid point, then the last two steps."""
    scheduler = DDIMScheduler(**base_config())
    scheduler.set_timesteps(10)
    timesteps = scheduler.timesteps[8 * scheduler.order :]
    sample = scheduler.add_noise(deterministic_ramp(), deterministic_ramp(reverse=True), timesteps[:1])
    for t in timesteps:
        sample = scheduler.step(dummy_model(sample, t), t, sample, 0.0).prev_sample
    assert abs(sample.abs().sum().item() - 354.5418) < 1e-2
    assert abs(sample.abs().mean().item() - 0.4616) < 1e-3


def test_steps_offset_grid() -> None:
    scheduler = DDIMScheduler(**base_config(steps_offset=1))
    scheduler.set_timesteps(5)
    assert scheduler.timesteps.tolist() == [801, 601, 401, 201, 1]
    assert scheduler.timesteps.dtype == torch.int64


@pytest.mark.parametrize(
    ("t", "prev", "expected"),
    [(0, 0, 0.0), (420, 400, 0.14771), (980, 960, 0.32460), (487, 486, 0.00979), (999, 998, 0.02)],
)
def test_variance(t: int, prev: int, expected: float) -> None:
    """test_variance: sigma^2 / eta^2 between two training timesteps."""
    alphas = DDIMScheduler(**base_config()).alphas_cumprod
    assert abs(float(ddim_variance(alphas[t], alphas[prev])) - expected) < 1e-5


def test_num_inference_steps_zero_raises() -> None:
    with pytest.raises(ValueError, match="num_inference_steps"):
        DDIMScheduler(**base_config()).set_timesteps(num_inference_steps=0)


def saved_and_reloaded(scheduler: DDIMScheduler, folder: Path) -> DDIMScheduler:
    scheduler.save_config(folder)
    reloaded = DDIMScheduler.from_pretrained(folder)
    assert isinstance(reloaded, DDIMScheduler)
    return reloaded


def check_save_load_step(
    folder: Path, config: dict[str, Any], time_step: int = 0, num_inference_steps: int = 50, eta: float = 0.0
) -> None:
    """``check_over_configs``/``check_over_forward``: a saved and reloaded scheduler steps identically."""
    scheduler = DDIMScheduler(**config)
    reloaded = saved_and_reloaded(scheduler, folder)
    sample = torch.rand((BATCH, CHANNELS, HEIGHT, WIDTH), generator=torch.Generator().manual_seed(0))
    residual = 0.1 * sample
    for instance in (scheduler, reloaded):
        instance.set_timesteps(num_inference_steps)
        assert instance.scale_model_input(sample, 0) is sample
    outputs = [
        s.step(residual, time_step, sample, eta, generator=torch.manual_seed(0)).prev_sample
        for s in (scheduler, reloaded)
    ]
    assert torch.sum(torch.abs(outputs[0] - outputs[1])) < 1e-5
    assert torch.isfinite(outputs[0]).all()


OVER_CONFIGS: list[dict[str, Any]] = [
    *({"num_train_timesteps": t} for t in (100, 500, 1000)),  # test_timesteps
    *({"steps_offset": o} for o in (0, 1)),  # test_steps_offset
    *(
        {"beta_start": s, "beta_end": e} for s, e in zip((0.0001, 0.001, 0.01), (0.002, 0.02, 0.2), strict=True)
    ),  # test_betas
    *({"beta_schedule": s} for s in ("linear", "squaredcos_cap_v2")),  # test_schedules
    *({"prediction_type": p} for p in ("epsilon", "v_prediction")),  # test_prediction_type
    *({"clip_sample": c} for c in (True, False)),  # test_clip_sample
    *({"timestep_spacing": s} for s in ("trailing", "leading")),  # test_timestep_spacing
    *({"rescale_betas_zero_snr": r} for r in (True, False)),  # test_rescale_betas_zero_snr
    {"thresholding": False},  # test_thresholding
    *(
        {"thresholding": True, "prediction_type": p, "sample_max_value": v}
        for v in (0.5, 1.0, 2.0)
        for p in ("epsilon", "v_prediction")
    ),
]


@pytest.mark.parametrize("overrides", OVER_CONFIGS, ids=str)
def test_over_configs(tmp_path: Path, overrides: dict[str, Any]) -> None:
    check_save_load_step(tmp_path, base_config(**overrides))


@pytest.mark.parametrize(
    ("time_step", "num_inference_steps", "eta"),
    [
        *((t, 50, 0.0) for t in (1, 10, 49)),  # test_time_indices
        *((t, n, 0.0) for t, n in zip((1, 10, 50), (10, 50, 500), strict=True)),  # test_inference_steps
        *((t, 50, e) for t, e in zip((1, 10, 49), (0.0, 0.5, 1.0), strict=True)),  # test_eta
    ],
)
def test_over_forward(tmp_path: Path, time_step: int, num_inference_steps: int, eta: float) -> None:
    check_save_load_step(tmp_path, base_config(), time_step, num_inference_steps, eta)


def test_betas_above_one_are_refused() -> None:
    """diffusers' test_betas also runs beta_end=2: betas above 1 give negative alphas and a sign-flipping
    alphas_cumprod (only the t=0 step stays finite there). A beta is a variance fraction; ours refuses it."""
    with pytest.raises(ValueError, match=r"beta_end=2\.0 is out of range; allowed values are \(0, 1\]"):
        DDIMScheduler(**base_config(beta_start=0.1, beta_end=2.0))
    linear = DDIMScheduler(**base_config(beta_start=0.1, beta_end=1.0))  # the largest allowed: a last alpha of 0
    assert math.isclose(float(linear.alphas_cumprod[0]), 0.9, rel_tol=1e-6)
    assert float(linear.alphas_cumprod[-1]) == 0.0
