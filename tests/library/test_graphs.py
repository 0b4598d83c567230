"""Whole-loop capture helpers: the loop body on the CPU, argument checks, and (CUDA only) graph capture
with and without noise, replay equal to the eager loop, and no host syncs."""

from __future__ import annotations

import pytest
import torch

from ddim import DDIMScheduler
from ddim.graphs import GraphedSampler, SamplingPlan, cuda_generators, forbid_syncs, run_steps

SHAPE = (2, 3, 8, 8)


def toy_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A smooth function of x and the per-row timestep (shape (batch,), int64)."""
    assert t.shape == (x.shape[0],) and t.dtype == torch.int64
    return torch.tanh(x) * (t.to(x.dtype) / 1000).view(-1, *([1] * (x.ndim - 1)))


def plain_loop(s: DDIMScheduler, x: torch.Tensor, eta: float, generator: torch.Generator | None) -> torch.Tensor:
    for t in s.timesteps:
        t_batch = torch.full((x.shape[0],), int(t), dtype=torch.int64, device=x.device)
        x = s.step(toy_model(x, t_batch), int(t), x, eta=eta, generator=generator).prev_sample
    return x


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_run_steps_is_the_plain_loop_on_cpu(eta: float) -> None:
    s = DDIMScheduler()
    s.set_timesteps(12)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    plan = SamplingPlan.build(s, SHAPE[0])
    assert len(plan.step_timesteps) == 12 and plan.model_timesteps.shape == (12, SHAPE[0])
    got = run_steps(toy_model, s, x, plan, eta, torch.Generator().manual_seed(7))
    want = plain_loop(s, x, eta, torch.Generator().manual_seed(7))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_plan_needs_timesteps_and_a_batch_size() -> None:
    s = DDIMScheduler()
    with pytest.raises(ValueError, match="set_timesteps"):
        SamplingPlan.build(s, 2)
    s.set_timesteps(5)
    for bad in (0, -1):
        with pytest.raises(ValueError, match=f"batch_size={bad} is out of range"):
            SamplingPlan.build(s, bad)
    for wrong in (2.0, True):
        with pytest.raises(TypeError, match="batch_size must be an int"):
            SamplingPlan.build(s, wrong)  # type: ignore[arg-type]


def test_capture_needs_cuda_and_cuda_generators() -> None:
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            GraphedSampler(toy_model, DDIMScheduler(), SHAPE)
    with pytest.raises(ValueError, match="cannot feed a CUDA graph"):
        cuda_generators(torch.Generator(), torch.device("cuda"))
    with pytest.raises(TypeError, match="generator"):
        cuda_generators([object()], torch.device("cuda"))  # type: ignore[list-item]
    assert cuda_generators(None, torch.device("cuda")) == []


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_graph_replay_equals_the_eager_loop(dtype: torch.dtype) -> None:
    s = DDIMScheduler()
    sampler = GraphedSampler(toy_model, s, SHAPE, num_inference_steps=50, dtype=dtype)
    x_t = torch.randn(SHAPE, device="cuda", dtype=dtype)
    eager = run_steps(toy_model, s, x_t, SamplingPlan.build(s, SHAPE[0]))
    for _ in range(2):  # replays are repeatable
        torch.testing.assert_close(sampler(x_t), eager, rtol=1e-3, atol=1e-3)


@needs_cuda
def test_graph_with_noise_advances_and_reseeds_its_generator() -> None:
    g = torch.Generator(device="cuda")
    s = DDIMScheduler()
    sampler = GraphedSampler(toy_model, s, SHAPE, num_inference_steps=50, eta=1.0, generator=g)
    x_t = torch.randn(SHAPE, device="cuda")
    g.manual_seed(3)
    first = sampler(x_t)
    second = sampler(x_t)
    g.manual_seed(3)
    again = sampler(x_t)
    assert not torch.allclose(first, second)
    torch.testing.assert_close(first, again)
    eager = run_steps(toy_model, s, x_t, SamplingPlan.build(s, SHAPE[0]), 1.0, g.manual_seed(3))
    torch.testing.assert_close(first, eager, rtol=1e-4, atol=1e-4)


@needs_cuda
def test_eager_loop_runs_without_syncs() -> None:
    s = DDIMScheduler()
    s.set_timesteps(50, device="cuda")
    plan = SamplingPlan.build(s, SHAPE[0])
    x = torch.randn(SHAPE, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    for eta in (0.0, 1.0):
        run_steps(toy_model, s, x, plan, eta, g)  # warm: tables on the device, kernels built
        with forbid_syncs():
            run_steps(toy_model, s, x, plan, eta, g)
