"""Whole-loop capture helpers: the loop body on the CPU, argument checks, and (CUDA only) graph capture
with and without noise, replay equal to the eager loop, and no host syncs."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from ddim import DDIMScheduler
from ddim.graphs import GraphedSampler, SamplingPlan, StaticInputs, cuda_generators, forbid_syncs, run_steps

SHAPE = (2, 3, 8, 8)


def toy_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A smooth function of x and the per-row timestep (shape (batch,), int64)."""
    assert t.shape == (x.shape[0],) and t.dtype == torch.int64
    return torch.tanh(x) * (t.to(x.dtype) / 1000).view(-1, *([1] * (x.ndim - 1)))


def conditioned_model(x: torch.Tensor, t: torch.Tensor, global_cond: torch.Tensor) -> torch.Tensor:
    """A policy-like model: the observation features shift the prediction per batch row."""
    return toy_model(x, t) + global_cond.sum(dim=1).view(-1, *([1] * (x.ndim - 1))) * 0.01


def guided_model(x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance in one function: conditional and unconditional passes as one batch,
    combined as eps_u + w (eps_c - eps_u) with w = 3 (label -1: no condition)."""
    both = torch.cat([x, x])
    labels = torch.cat([class_labels, torch.full_like(class_labels, -1)])
    eps = torch.tanh(both) * (torch.cat([t, t]).to(x.dtype) / 1000 + 0.1 * labels.to(x.dtype)).view(-1, 1, 1, 1)
    eps_c, eps_u = eps.chunk(2)
    return eps_u + 3.0 * (eps_c - eps_u)


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


@pytest.mark.parametrize(
    ("model", "name", "example"),
    [
        (conditioned_model, "global_cond", torch.randn(SHAPE[0], 128)),
        (guided_model, "class_labels", torch.tensor([3, 7])),
    ],
)
def test_run_steps_passes_the_extra_inputs_to_the_model(model: Any, name: str, example: torch.Tensor) -> None:
    s = DDIMScheduler()
    s.set_timesteps(8)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    got = run_steps(
        model, s, x, SamplingPlan.build(s, SHAPE[0]), 1.0, torch.Generator().manual_seed(5), extra={name: example}
    )
    g = torch.Generator().manual_seed(5)
    want = x
    for t in s.timesteps:
        t_batch = torch.full((SHAPE[0],), int(t), dtype=torch.int64)
        want = s.step(model(want, t_batch, **{name: example}), int(t), want, eta=1.0, generator=g).prev_sample
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    other = run_steps(
        model, s, x, SamplingPlan.build(s, SHAPE[0]), 1.0, torch.Generator().manual_seed(5), extra={name: example + 1}
    )
    assert not torch.allclose(got, other)  # the condition reaches the model


def test_static_inputs_are_copied_in_and_checked() -> None:
    obs = torch.randn(2, 128)
    inputs = StaticInputs({"global_cond": obs}, "cpu")
    buffer = inputs.buffers["global_cond"]
    assert torch.equal(buffer, obs) and buffer.data_ptr() != obs.data_ptr()
    new = torch.randn(2, 128)
    inputs.fill({"global_cond": new})
    assert inputs.buffers["global_cond"] is buffer and torch.equal(buffer, new)  # same memory, new values
    with pytest.raises(ValueError, match=r"must be exactly the captured \['global_cond'\]"):
        inputs.fill({})
    with pytest.raises(ValueError, match="must be exactly"):
        inputs.fill({"global_cond": new, "class_labels": new})
    with pytest.raises(
        ValueError, match=r"shape \(3, 128\) and dtype torch.float32; the graph was captured with shape \(2, 128\)"
    ):
        inputs.fill({"global_cond": torch.randn(3, 128)})
    with pytest.raises(ValueError, match=r"dtype torch\.float64"):
        inputs.fill({"global_cond": new.double()})
    with pytest.raises(TypeError, match=r"global_cond must be a torch\.Tensor"):
        inputs.fill({"global_cond": [1.0]})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match=r"extra_inputs\['obs'\] must be a torch.Tensor"):
        StaticInputs({"obs": 1.0}, "cpu")  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="must be a Python identifier"):
        StaticInputs({"not a name": obs}, "cpu")
    assert StaticInputs(None, "cpu").buffers == {}
    StaticInputs(None, "cpu").fill({})


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


@needs_cuda
@pytest.mark.parametrize(
    ("model", "name", "example"),
    [
        (conditioned_model, "global_cond", torch.randn(SHAPE[0], 128)),
        (guided_model, "class_labels", torch.tensor([3, 7])),
    ],
)
def test_conditioned_graph_takes_its_inputs_per_call(model: Any, name: str, example: torch.Tensor) -> None:
    s = DDIMScheduler()
    example = example.cuda()
    g = torch.Generator(device="cuda")
    sampler = GraphedSampler(
        model, s, SHAPE, num_inference_steps=20, eta=1.0, generator=g, extra_inputs={name: example}
    )
    x_t = torch.randn(SHAPE, device="cuda")
    plan = SamplingPlan.build(s, SHAPE[0])
    for value in (example, example + 1):  # a new condition each call, no new capture
        g.manual_seed(4)
        got = sampler(x_t, **{name: value})
        eager = run_steps(model, s, x_t, plan, 1.0, g.manual_seed(4), extra={name: value})
        torch.testing.assert_close(got, eager, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="must be exactly the captured"):
        sampler(x_t)


def test_run_steps_steps_model_wrappers_as_sample_does() -> None:
    """CFG++ (renoise output) and inpainting (after-step correction) in the graphable loop, run on the CPU."""
    import ddim
    from ddim.analytic import GaussianMixtureModel

    scheduler = ddim.DDIMScheduler(clip_sample=False, timestep_spacing="trailing", prev_timestep_from_grid=True)
    means = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    conditional = GaussianMixtureModel(scheduler.alphas_cumprod, means[:1], 0.3)
    unconditional = GaussianMixtureModel(scheduler.alphas_cumprod, means, 0.3)
    guided = ddim.CFGPlusPlus(conditional, unconditional, 0.6)
    painted = ddim.Inpainting(guided, known=torch.zeros(3, 2, dtype=torch.float64), known_mask=torch.tensor([0.0, 1.0]))
    x_T = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for model in (guided, painted):
        want = ddim.sample(
            model, scheduler, noise=x_T, num_inference_steps=8, generator=torch.Generator().manual_seed(1)
        )
        scheduler.set_timesteps(8)
        generator = torch.Generator().manual_seed(1)  # the known region's noise, drawn in the same order
        got = run_steps(model, scheduler, x_T, SamplingPlan.build(scheduler, 3), generator=generator)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert bool((got[:, 1] == 0).all())
