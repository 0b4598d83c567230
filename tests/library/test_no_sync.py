"""Tensor timesteps without host reads, per-row timesteps, stateless stepping and deepcopy.

``torch.compile(fullgraph=True)`` fails on any graph break, and reading a tensor value on the host
(``.item()``, ``int(t)``, ``if t``) is one; so a full-graph compile of ``step`` with a tensor timestep
proves ``step`` never forces a device synchronisation. On CUDA the same is checked directly with
``torch.cuda.set_sync_debug_mode("error")`` (skipped without a GPU).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch._dynamo
from hypothesis import given, settings
from hypothesis import strategies as st

from ddim import DDIMScheduler

SHAPE = (3, 2, 4, 4)


def inputs(dtype: torch.dtype = torch.float32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(SHAPE, generator=gen, dtype=dtype) * 2 for _ in range(3))  # type: ignore[return-value]


def ready(n: int = 10, **config: Any) -> DDIMScheduler:
    scheduler = DDIMScheduler(**config)
    scheduler.set_timesteps(n)
    return scheduler


def compiled_step(scheduler: DDIMScheduler, backend: str, **kwargs: Any) -> Any:
    torch._dynamo.reset()

    def step(m: torch.Tensor, t: torch.Tensor, x: torch.Tensor, z: torch.Tensor | None) -> Any:
        return scheduler.step(m, t, x, variance_noise=z, return_dict=False, **kwargs)

    return torch.compile(step, fullgraph=True, backend=backend)


@pytest.mark.slow
def test_inductor_full_graph_matches_eager() -> None:
    """The real compiler, a 0-dim and a 1-D tensor timestep, clipping on: same numbers as eager."""
    scheduler = ready(clip_sample=True)
    m, x, _ = inputs()
    step = compiled_step(scheduler, "inductor")
    prev, x0 = step(m, torch.tensor(901), x, None)
    expected = scheduler.step(m, 901, x)
    torch.testing.assert_close(prev, expected.prev_sample, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x0, expected.pred_original_sample, rtol=1e-5, atol=1e-6)
    rows = torch.tensor([901, 501, 1])
    prev, _ = step(m, rows, x, None)
    for i, t in enumerate(rows.tolist()):
        torch.testing.assert_close(prev[i], scheduler.step(m, t, x).prev_sample[i], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("config", "kwargs"),
    [
        ({"clip_sample": False}, {}),
        ({"prediction_type": "v_prediction", "clip_sample": True}, {"use_clipped_model_output": True}),
        ({"prediction_type": "sample", "thresholding": True}, {"eta": 0.5}),
        ({"rescale_betas_zero_snr": True, "prediction_type": "v_prediction"}, {"eta": 1.0}),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_traced_step_has_no_graph_break(config: dict[str, Any], kwargs: dict[str, Any], dtype: torch.dtype) -> None:
    """Dynamo traces the whole step (backend "eager" keeps it fast); results equal the eager step."""
    scheduler = ready(**config)
    m, x, z = inputs(dtype)
    noise = z if kwargs.get("eta", 0) > 0 else None
    step = compiled_step(scheduler, "eager", **kwargs)
    for t in (torch.tensor(999), torch.tensor([999, 400, 0])):
        prev, x0 = step(m, t, x, noise)
        for i, row_t in enumerate(t.reshape(-1).expand(SHAPE[0]).tolist()):
            expected = scheduler.step(m, row_t, x, variance_noise=noise, **kwargs)
            torch.testing.assert_close(
                prev[i], expected.prev_sample[i], rtol=1e-12 if dtype == torch.float64 else 2e-6, atol=1e-6
            )
            torch.testing.assert_close(x0[i], expected.pred_original_sample[i], rtol=2e-6, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: checks the absence of device syncs directly")
@pytest.mark.parametrize("first_step_builds_table", [True, False])
def test_cuda_step_with_device_timestep_never_syncs(first_step_builds_table: bool) -> None:
    """No sync in a step, also in the first, which uploads the coefficient table (pinned, non-blocking)."""
    scheduler = ready(clip_sample=True)
    m, x, z = (t.cuda() for t in inputs())
    one, rows_t = torch.tensor(901, device="cuda"), torch.tensor([901, 501, 1], device="cuda")
    if not first_step_builds_table:
        scheduler.step(m, one, x)
        scheduler.step(m, rows_t, x, eta=0.5, variance_noise=z)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        prev = scheduler.step(m, one, x).prev_sample
        rows = scheduler.step(m, rows_t, x, eta=0.5, variance_noise=z)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(prev.cpu(), scheduler.step(m.cpu(), 901, x.cpu()).prev_sample, rtol=1e-5, atol=1e-6)
    for i, t in enumerate((901, 501, 1)):
        expected = scheduler.step(m[i : i + 1].cpu(), t, x[i : i + 1].cpu(), eta=0.5, variance_noise=z[i : i + 1].cpu())
        torch.testing.assert_close(rows.prev_sample[i : i + 1].cpu(), expected.prev_sample, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- per-row timesteps
@pytest.mark.parametrize("eta", [0.0, 0.7])
@pytest.mark.parametrize("noise", ["variance_noise", "generator_list"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_per_row_timesteps_equal_stepping_each_row_alone(eta: float, noise: str, prediction_type: str) -> None:
    scheduler = ready(20, prediction_type=prediction_type, thresholding=prediction_type == "sample")
    m, x, z = inputs(torch.float64)
    rows = torch.tensor([950, 500, 3])
    seeds = [11, 12, 13]
    kwargs: dict[str, Any] = {"variance_noise": z}
    if noise == "generator_list":
        kwargs = {"generator": [torch.Generator().manual_seed(s) for s in seeds]}
    together = scheduler.step(m, rows, x, eta=eta, **kwargs)
    for i, t in enumerate(rows.tolist()):
        alone_kwargs: dict[str, Any] = {"variance_noise": z[i : i + 1]}
        if noise == "generator_list":
            alone_kwargs = {"generator": [torch.Generator().manual_seed(seeds[i])]}
        alone = scheduler.step(m[i : i + 1], t, x[i : i + 1], eta=eta, **alone_kwargs)
        torch.testing.assert_close(together.prev_sample[i : i + 1], alone.prev_sample, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(
            together.pred_original_sample[i : i + 1], alone.pred_original_sample, rtol=1e-13, atol=1e-13
        )


def test_numpy_and_tensor_timesteps_equal_python_int() -> None:
    import numpy as np

    scheduler = ready()
    m, x, _ = inputs()
    expected = scheduler.step(m, 901, x).prev_sample
    for t in (np.int64(901), np.int32(901), torch.tensor(901), torch.tensor(901, dtype=torch.int32)):
        assert torch.equal(scheduler.step(m, t, x).prev_sample, expected)


# ----------------------------------------------------------------------------- stateless stepping
@settings(max_examples=30, deadline=None)
@given(order=st.lists(st.integers(0, 999), min_size=1, max_size=12), eta=st.sampled_from([0.0, 0.5, 1.0]))
def test_any_order_repeats_and_skips_give_the_same_step(order: list[int], eta: float) -> None:
    """A step at t depends on (t, inputs) only, whatever was stepped before, on or off the grid."""
    scheduler = ready(25, clip_sample=True)
    m, x, z = inputs(torch.float64)
    for t in order:
        fresh = ready(25, clip_sample=True).step(m, t, x, eta=eta, variance_noise=z)
        again = scheduler.step(m, t, x, eta=eta, variance_noise=z)
        assert torch.equal(again.prev_sample, fresh.prev_sample)
        assert torch.equal(again.pred_original_sample, fresh.pred_original_sample)


def test_deepcopy_mid_loop_continues_identically() -> None:
    scheduler = ready(20, prediction_type="v_prediction", clip_sample=False)
    _, x, _ = inputs(torch.float64)
    timesteps = scheduler.timesteps.tolist()

    def model(sample: torch.Tensor, t: int) -> torch.Tensor:
        return torch.tanh(sample) * (t / 1000)

    for t in timesteps[:8]:
        x = scheduler.step(model(x, t), t, x, eta=0.3, generator=torch.Generator().manual_seed(t)).prev_sample
    clone = copy.deepcopy(scheduler)
    assert clone.num_inference_steps == 20 and torch.equal(clone.timesteps, scheduler.timesteps)
    a = b = x
    for t in timesteps[8:]:
        a = scheduler.step(model(a, t), t, a, eta=0.3, generator=torch.Generator().manual_seed(t)).prev_sample
        b = clone.step(model(b, t), t, b, eta=0.3, generator=torch.Generator().manual_seed(t)).prev_sample
    assert torch.equal(a, b)
    clone.set_timesteps(5)
    assert scheduler.num_inference_steps == 20 and len(scheduler.timesteps) == 20
