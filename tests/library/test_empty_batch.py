"""A step on zero rows: an empty list of generators is one per row and gives an empty result, never a traceback."""

from __future__ import annotations

import pytest
import torch

import ddim
from ddim import ddim_step_with_logprob
from ddim.noise import randn_like_diffusers


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_a_zero_row_step_with_an_empty_generator_list_returns_zero_rows(eta: float) -> None:
    scheduler = ddim.DDIMScheduler()
    scheduler.set_timesteps(10)
    empty = torch.zeros(0, 3, 4)
    out = scheduler.step(empty, 901, empty, eta=eta, generator=[])
    assert out.prev_sample.shape == (0, 3, 4)
    assert out.pred_original_sample.shape == (0, 3, 4)
    drawn, log_prob = ddim_step_with_logprob(scheduler, empty, 901, empty, 1.0, generator=[])
    assert drawn.shape == (0, 3, 4) and log_prob.shape == (0,)


def test_generator_lists_must_hold_one_per_row_and_need_a_batch_dimension() -> None:
    assert randn_like_diffusers((0, 2), []).shape == (0, 2)
    with pytest.raises(ValueError, match=r"list of 0 generators; it must hold one per batch row \(batch size 2\)"):
        randn_like_diffusers((2, 2), [])
    with pytest.raises(ValueError, match=r"list of 1 generators; it must hold one per batch row \(batch size 0\)"):
        randn_like_diffusers((0, 2), [torch.Generator()])
    with pytest.raises(ValueError, match=r"needs a batch-first shape, got \(\)"):
        randn_like_diffusers((), [])


def test_the_library_caps_num_train_timesteps() -> None:
    from ddim.schedules import MAX_TRAIN_TIMESTEPS

    assert MAX_TRAIN_TIMESTEPS == 100_000
    with pytest.raises(
        ValueError, match=r"num_train_timesteps=1000000000 is out of range; allowed values are 1\.\.100000"
    ):
        ddim.DDIMScheduler(num_train_timesteps=10**9)
