"""Gradients through the step, the fused kernel and the sampling loop (reward backpropagation, null-text
optimisation): the autograd path gives the fast path's numbers, and its derivatives are checked numerically."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import ddim
from ddim.analytic import GaussianMixtureModel

PREDICTIONS = ("epsilon", "sample", "v_prediction")
TRANSFORMS: dict[str, dict[str, Any]] = {
    "none": {"clip_sample": False},
    "clip": {"clip_sample": True, "clip_sample_range": 1.5},
    "threshold": {"clip_sample": False, "thresholding": True, "dynamic_thresholding_ratio": 0.9},
}
SHAPE = (3, 2, 4, 4)


def ready(prediction: str, transform: str) -> ddim.DDIMScheduler:
    scheduler = ddim.DDIMScheduler(prediction_type=prediction, **TRANSFORMS[transform])
    scheduler.set_timesteps(10)
    return scheduler


def tensors(dtype: torch.dtype = torch.float64, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(SHAPE, generator=gen, dtype=dtype) * 2 for _ in range(3)]


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("transform", list(TRANSFORMS))
@pytest.mark.parametrize("eta", [0.0, 0.7])
@pytest.mark.parametrize("clipped", [False, True])
def test_step_gradients_pass_gradcheck(prediction: str, transform: str, eta: float, clipped: bool) -> None:
    scheduler = ready(prediction, transform)
    inputs = [t.requires_grad_(True) for t in tensors()]
    timestep = torch.tensor([901, 501, 101])

    def step(m: torch.Tensor, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = scheduler.step(m, timestep, x, eta=eta, use_clipped_model_output=clipped, variance_noise=z)
        return out.prev_sample, out.pred_original_sample

    assert torch.autograd.gradcheck(step, tuple(inputs))


@pytest.mark.parametrize("transform", list(TRANSFORMS))
def test_the_autograd_path_gives_the_fast_paths_numbers(transform: str) -> None:
    """Including a CPU tensor large enough for the chunked fast path (which writes into ``out=`` buffers)."""
    scheduler = ready("epsilon", transform)
    for shape in (SHAPE, (4, 4, 384, 384)):
        gen = torch.Generator().manual_seed(1)
        x, m, z = (torch.randn(shape, generator=gen) for _ in range(3))
        fast = scheduler.step(m, 501, x, eta=0.5, variance_noise=z)
        recorded = scheduler.step(m.clone().requires_grad_(True), 501, x, eta=0.5, variance_noise=z)
        assert recorded.prev_sample.requires_grad and not fast.prev_sample.requires_grad
        assert torch.equal(recorded.prev_sample.detach(), fast.prev_sample)
        assert torch.equal(recorded.pred_original_sample.detach(), fast.pred_original_sample)


def test_no_graph_is_built_under_no_grad() -> None:
    scheduler = ready("epsilon", "clip")
    x, m, _ = tensors(torch.float32)
    with torch.no_grad():
        out = scheduler.step(m.requires_grad_(True), 501, x)
    assert not out.prev_sample.requires_grad


@pytest.fixture
def interpreted(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The fused kernel built for Triton's interpreter, so it runs on CPU tensors."""
    pytest.importorskip("triton", reason="triton is not installed (a test dependency on Linux x86-64)")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    from ddim.kernels import triton_update

    triton_update.kernel.cache_clear()
    yield
    triton_update.kernel.cache_clear()


@pytest.mark.parametrize("transform", list(TRANSFORMS))
def test_the_fused_kernels_backward_is_the_torch_paths(interpreted: Any, transform: str) -> None:
    from ddim.kernels.autograd import differentiable_fused_update
    from ddim.update import torch_update

    scheduler = ready("v_prediction", transform)
    rule = scheduler.plan.rule(scheduler.config, 0.8, True)
    coefficients, terms = rule.coefficients(501, tensors(torch.float32)[0]), rule.terms
    results = []
    for update in ("kernel", "torch"):
        x, m, z = (t.requires_grad_(True) for t in tensors(torch.float32, seed=2))
        run = differentiable_fused_update if update == "kernel" else torch_update
        prev, x0 = run(x, m, coefficients, terms, scheduler.x0_transform(), z)
        (prev * torch.linspace(-1, 1, prev.numel()).reshape(prev.shape)).sum().add(x0.square().sum()).backward()
        results.append((prev.detach(), x0.detach(), x.grad, m.grad, z.grad))
    for kernel_value, torch_value in zip(*results, strict=True):
        torch.testing.assert_close(kernel_value, torch_value, rtol=1e-5, atol=1e-5)


def test_the_loop_backpropagates_on_request() -> None:
    scheduler = ddim.DDIMScheduler(clip_sample=False)
    mixture = GaussianMixtureModel(scheduler.alphas_cumprod, torch.tensor([[1.0, -1.0]]), 0.3)
    noise = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def loss(x_T: torch.Tensor) -> torch.Tensor:
        samples = ddim.sample(mixture, scheduler, noise=x_T, num_inference_steps=5, progress=False, differentiable=True)
        return samples.square().sum()

    assert torch.autograd.gradcheck(loss, (noise.clone().requires_grad_(True),))
    plain = ddim.sample(
        mixture, scheduler, noise=noise.clone().requires_grad_(True), num_inference_steps=5, progress=False
    )
    assert not plain.requires_grad  # the default loop runs under no_grad
    with pytest.raises(TypeError, match="differentiable must be a bool"):
        ddim.sample(mixture, scheduler, noise=noise, differentiable="yes", progress=False)  # type: ignore[call-overload]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA and Triton")
def test_cuda_gradients_through_the_fused_kernel_equal_the_cpu_ones() -> None:
    pytest.importorskip("triton")
    scheduler = ready("epsilon", "clip")
    grads = []
    for device in ("cuda", "cpu"):
        x, m, z = (t.float().to(device).requires_grad_(True) for t in tensors(seed=3))
        out = scheduler.step(m, torch.tensor([901, 501, 101], device=device), x, eta=0.5, variance_noise=z)
        out.prev_sample.square().sum().backward()
        grads.append([g.cpu() for g in (x.grad, m.grad, z.grad)])
    for cuda_grad, cpu_grad in zip(*grads, strict=True):
        torch.testing.assert_close(cuda_grad, cpu_grad, rtol=1e-5, atol=1e-5)
