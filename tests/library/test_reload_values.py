"""Saved and reloaded schedulers pinned to diffusers' numbers, not only to the scheduler they were saved from.

For each family (``DDIMScheduler``, ``DDIMInverseScheduler``, ``DDIMParallelScheduler``) and several configs: ours
saved and loaded back by ours and by diffusers, and diffusers' saved and loaded by ours, must step exactly as
diffusers' scheduler built directly from the config does, on the same inputs, at every timestep of the grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import pytest
import torch

import ddim

SHAPE = (2, 3, 4, 4)
N = 8

SAMPLING_CONFIGS: list[dict[str, Any]] = [
    {},
    {
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "prediction_type": "v_prediction",
        "timestep_spacing": "trailing",
    },
    {
        "beta_schedule": "squaredcos_cap_v2",
        "prediction_type": "sample",
        "thresholding": True,
        "dynamic_thresholding_ratio": 0.9,
        "sample_max_value": 1.5,
        "timestep_spacing": "linspace",
    },
    {
        "num_train_timesteps": 500,
        "rescale_betas_zero_snr": True,
        "prediction_type": "v_prediction",
        "clip_sample_range": 0.7,
        "timestep_spacing": "trailing",
    },
    {"trained_betas": np.linspace(2e-4, 0.03, 1000).tolist(), "clip_sample": False},
]
INVERSE_CONFIGS: list[dict[str, Any]] = [
    {},
    {
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "timestep_spacing": "trailing",
    },
    {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction", "clip_sample_range": 0.8},
    {"num_train_timesteps": 500, "rescale_betas_zero_snr": True, "prediction_type": "v_prediction"},
]
FAMILIES = {
    "DDIMScheduler": (ddim.DDIMScheduler, diffusers.DDIMScheduler, SAMPLING_CONFIGS),
    "DDIMParallelScheduler": (ddim.DDIMParallelScheduler, diffusers.DDIMParallelScheduler, SAMPLING_CONFIGS),
    "DDIMInverseScheduler": (ddim.DDIMInverseScheduler, diffusers.DDIMInverseScheduler, INVERSE_CONFIGS),
}
CASES = [(family, i) for family, (_, _, configs) in FAMILIES.items() for i in range(len(configs))]


def inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(SHAPE, generator=gen) for _ in range(3))  # type: ignore[return-value]


def step_outputs(scheduler: Any, family: str, seed: int) -> list[torch.Tensor]:
    """prev_sample and pred_original_sample at every grid timestep (eta 0.5, noise given), plus the batched step."""
    x, m, noise = inputs(seed)
    scheduler.set_timesteps(N)
    outputs = [scheduler.timesteps.clone()]
    for t in scheduler.timesteps.tolist():
        if family == "DDIMInverseScheduler":
            out = scheduler.step(m, t, x)
        else:
            out = scheduler.step(m, t, x, eta=0.5, variance_noise=noise)
        outputs.extend([out.prev_sample, out.pred_original_sample])
    if family == "DDIMParallelScheduler":
        rows = scheduler.timesteps[[0, N // 2]]
        outputs.append(scheduler.batch_step_no_noise(m, rows, x, eta=0.0))
    return outputs


@pytest.mark.parametrize(("family", "index"), CASES, ids=[f"{family}-{i}" for family, i in CASES])
def test_reloaded_schedulers_step_as_diffusers_built_from_the_config(family: str, index: int, tmp_path: Path) -> None:
    ours_cls, theirs_cls, configs = FAMILIES[family]
    config = configs[index]
    ours_cls(**config).save_pretrained(tmp_path / "ours")
    theirs_cls(**config).save_pretrained(tmp_path / "theirs")
    reloaded = {
        "ours -> ours": ours_cls.from_pretrained(tmp_path / "ours"),
        "ours -> diffusers": theirs_cls.from_pretrained(tmp_path / "ours"),
        "diffusers -> ours": ours_cls.from_pretrained(tmp_path / "theirs"),
    }
    expected = step_outputs(theirs_cls(**config), family, index)
    assert all(torch.isfinite(value).all() for value in expected)
    for route, scheduler in reloaded.items():
        got = step_outputs(scheduler, family, index)
        assert len(got) == len(expected), route
        torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0, msg=f"{route}: timesteps")
        for value, reference in zip(got[1:], expected[1:], strict=True):
            torch.testing.assert_close(
                value, reference, rtol=1e-5, atol=1e-5, msg=lambda text, where=route: f"{where}: {text}"
            )
