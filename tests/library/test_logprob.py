"""``ddim.ddim_step_with_logprob`` against DDPO's patched step, written out here from its description.

DDPO (Black et al. 2023, arXiv 2305.13301; kvablack/ddpo-pytorch, ``ddim_with_logprob.py``) computes, on a
diffusers ``DDIMScheduler`` in the dtype of its tables: the previous timestep ``clamp(t - T // N, 0, T - 1)``,
x0 and eps per prediction type, the scheduler's clipping or thresholding, sigma = eta sqrt(variance), the mean
sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps, x_prev = mean + sigma z (z from ``randn_tensor``)
unless given, and the Gaussian log-density of the detached x_prev, averaged over the non-batch dimensions.
"""

from __future__ import annotations

import math
from typing import Any

import diffusers
import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor
from hypothesis import given, settings
from hypothesis import strategies as st
from test_differential import CONFIGS

import ddim
from ddim import ddim_step_with_logprob

SHAPE = (3, 2, 4, 4)


def per_row(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A 0-dim or (B,) value shaped to broadcast over ``like``."""
    return value.reshape(-1, *([1] * (like.ndim - 1))) if value.ndim else value


def ddpo_step(
    scheduler: diffusers.DDIMScheduler,
    model_output: torch.Tensor,
    timestep: torch.Tensor,
    sample: torch.Tensor,
    eta: float,
    use_clipped_model_output: bool = False,
    generator: torch.Generator | None = None,
    prev_sample: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DDPO's step with log-probability (module doc), on diffusers' scheduler."""
    config = scheduler.config
    total = config.num_train_timesteps
    prev_t = (timestep - total // scheduler.num_inference_steps).clamp(0, total - 1)
    table = scheduler.alphas_cumprod
    a = per_row(table[timestep], sample)
    a_prev = per_row(torch.where(prev_t >= 0, table[prev_t], scheduler.final_alpha_cumprod), sample)
    b = 1 - a
    if config.prediction_type == "epsilon":
        x0, eps = (sample - b.sqrt() * model_output) / a.sqrt(), model_output
    elif config.prediction_type == "sample":
        x0 = model_output
        eps = (sample - a.sqrt() * x0) / b.sqrt()
    else:
        x0 = a.sqrt() * sample - b.sqrt() * model_output
        eps = a.sqrt() * model_output + b.sqrt() * sample
    if config.thresholding:
        x0 = scheduler._threshold_sample(x0)
    elif config.clip_sample:
        x0 = x0.clamp(-config.clip_sample_range, config.clip_sample_range)
    variance = (1 - a_prev) / b * (1 - a / a_prev)
    std = eta * variance.sqrt()
    if use_clipped_model_output:
        eps = (sample - a.sqrt() * x0) / b.sqrt()
    mean = a_prev.sqrt() * x0 + (1 - a_prev - std**2).sqrt() * eps
    if prev_sample is None:
        noise = randn_tensor(model_output.shape, generator=generator, device=sample.device, dtype=sample.dtype)
        prev_sample = mean + std * noise
    log_prob = -((prev_sample.detach() - mean) ** 2) / (2 * std**2) - std.log() - math.log(math.sqrt(2 * math.pi))
    return prev_sample.to(sample.dtype), log_prob.mean(dim=tuple(range(1, log_prob.ndim)))


def pair(config: dict[str, Any], n: int, widen: bool) -> tuple[ddim.DDIMScheduler, diffusers.DDIMScheduler]:
    ours, theirs = ddim.DDIMScheduler(**config), diffusers.DDIMScheduler(**config)
    if widen:
        theirs.alphas_cumprod = theirs.alphas_cumprod.double()
        theirs.final_alpha_cumprod = theirs.final_alpha_cumprod.double()
    ours.set_timesteps(n)
    theirs.set_timesteps(n)
    return ours, theirs


def inputs(dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=gen, dtype=dtype), torch.randn(SHAPE, generator=gen, dtype=dtype)


LOGPROB_CONFIGS = CONFIGS[::4]
ETAS = (0.5, 1.0)


def relative(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float(((ours - theirs).abs() / theirs.abs().clamp(min=1.0)).max())


@pytest.mark.parametrize("index", range(len(LOGPROB_CONFIGS)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equals_ddpo_on_the_differential_configurations(index: int, dtype: torch.dtype) -> None:
    """float32 within 1e-6 and float64 within 1e-12 of DDPO's step on widened (float64) tables."""
    config, n = LOGPROB_CONFIGS[index]
    ours, theirs = pair(config, n, widen=True)
    x, m = inputs(dtype, index)
    tolerance = 1e-6 if dtype == torch.float32 else 1e-12
    for eta in ETAS:
        for t in ours.timesteps.tolist():
            if float(theirs._get_variance(t, max(t - config["num_train_timesteps"] // n, 0))) == 0.0:
                with pytest.raises(ValueError, match="sigma is 0"):
                    ddim_step_with_logprob(ours, m, t, x, eta)
                continue
            drawn, log_prob = ddim_step_with_logprob(ours, m, t, x, eta, generator=torch.Generator().manual_seed(t))
            ref_drawn, ref_log_prob = ddpo_step(
                theirs, m, torch.tensor(t), x, eta, generator=torch.Generator().manual_seed(t)
            )
            assert drawn.dtype == dtype and log_prob.shape == (SHAPE[0],)
            assert torch.isfinite(log_prob).all()
            if not torch.isfinite(ref_log_prob).all():
                # DDPO's radicand 1 - abar_prev - sigma^2 rounds below 0 at eta = 1 (NaN); ours clamps it to 0
                assert eta == 1.0
                continue
            assert relative(log_prob, ref_log_prob) < tolerance
            torch.testing.assert_close(drawn, ref_drawn, rtol=tolerance * 10, atol=tolerance * 10)
            scored = x + 0.1 * m
            _, log_prob = ddim_step_with_logprob(ours, m, t, x, eta, prev_sample=scored)
            _, ref_log_prob = ddpo_step(theirs, m, torch.tensor(t), x, eta, prev_sample=scored)
            assert relative(log_prob, ref_log_prob) < tolerance * 10


def test_per_row_and_per_element_timesteps_equal_each_slice_alone() -> None:
    ours, _ = pair({"clip_sample": False}, 20, widen=False)
    x, m = inputs(torch.float64, 1)
    scored = x + 0.2 * m
    rows = torch.tensor([981, 501, 21])
    _, log_prob = ddim_step_with_logprob(ours, m, rows, x, 0.8, prev_sample=scored, reduction="none")
    for i, t in enumerate(rows.tolist()):
        _, alone = ddim_step_with_logprob(
            ours, m[i : i + 1], t, x[i : i + 1], 0.8, prev_sample=scored[i : i + 1], reduction="none"
        )
        torch.testing.assert_close(log_prob[i : i + 1], alone, rtol=1e-12, atol=1e-12)
    frames = torch.tensor([[981, 501], [21, 961], [1, 41]])  # one timestep per (row, frame): shape (3, 2)
    _, log_prob = ddim_step_with_logprob(ours, m, frames, x, 0.8, prev_sample=scored, reduction="none")
    for i in range(3):
        for j in range(2):
            piece = (slice(i, i + 1), slice(j, j + 1))
            _, alone = ddim_step_with_logprob(
                ours, m[piece], int(frames[i, j]), x[piece], 0.8, prev_sample=scored[piece], reduction="none"
            )
            torch.testing.assert_close(log_prob[piece], alone, rtol=1e-12, atol=1e-12)


def test_reductions_and_the_unclamped_landing() -> None:
    config = {"clip_sample": False, "set_alpha_to_one": False, "timestep_spacing": "trailing"}
    scheduler, _ = pair(config, 10, widen=False)
    x, m = inputs(torch.float64, 2)
    scored = x + 0.3 * m
    _, each = ddim_step_with_logprob(scheduler, m, 501, x, 1.0, prev_sample=scored, reduction="none")
    _, mean = ddim_step_with_logprob(scheduler, m, 501, x, 1.0, prev_sample=scored)
    _, total = ddim_step_with_logprob(scheduler, m, 501, x, 1.0, prev_sample=scored, reduction="sum")
    assert each.shape == SHAPE
    torch.testing.assert_close(mean, each.mean(dim=(1, 2, 3)))
    torch.testing.assert_close(total, each.sum(dim=(1, 2, 3)))
    # unclamped: the draw is exactly scheduler.step's; clamped, the last step lands on alphas_cumprod[0] instead
    last = int(scheduler.timesteps[-1])
    drawn, _ = ddim_step_with_logprob(
        scheduler, m, last, x, 1.0, generator=torch.Generator().manual_seed(3), clamp_prev_timestep=False
    )
    stepped = scheduler.step(m, last, x, eta=1.0, generator=torch.Generator().manual_seed(3)).prev_sample
    torch.testing.assert_close(drawn, stepped, rtol=1e-12, atol=1e-12)
    unit = ddim.DDIMScheduler(clip_sample=False)  # set_alpha_to_one: the last step lands on abar = 1
    unit.set_timesteps(10)
    with pytest.raises(ValueError, match="sigma is 0 at timestep=0"):
        ddim_step_with_logprob(unit, m, 0, x, 1.0, clamp_prev_timestep=False)


def test_log_density_is_the_gaussian_of_the_steps_mean_and_sigma() -> None:
    scheduler, _ = pair({"clip_sample": True, "prediction_type": "v_prediction"}, 25, widen=False)
    x, m = inputs(torch.float64, 4)
    scored = x + 0.1 * m
    t = 601
    _, log_prob = ddim_step_with_logprob(
        scheduler, m, t, x, 0.6, prev_sample=scored, reduction="none", clamp_prev_timestep=False
    )
    mean = scheduler.step(m, t, x, eta=0.6, variance_noise=torch.zeros_like(x)).prev_sample
    sigma = 0.6 * float(scheduler._get_variance(t)) ** 0.5
    expected = torch.distributions.Normal(mean, sigma).log_prob(scored)
    torch.testing.assert_close(log_prob, expected, rtol=1e-6, atol=1e-6)  # _get_variance is float32


def test_gradient_flows_into_the_model_output_and_not_into_prev_sample() -> None:
    scheduler, _ = pair({"clip_sample": False, "prediction_type": "epsilon"}, 10, widen=False)
    x, m = inputs(torch.float64, 5)
    scored = (x + 0.1 * m).requires_grad_(True)

    def density(model_output: torch.Tensor) -> torch.Tensor:
        return ddim_step_with_logprob(
            scheduler, model_output, torch.tensor([901, 501, 101]), x, 0.9, prev_sample=scored
        )[1]

    assert torch.autograd.gradcheck(density, (m.clone().requires_grad_(True),))
    density(m.clone().requires_grad_(True)).sum().backward()
    assert scored.grad is None


@pytest.mark.parametrize("transform", [{"clip_sample": True}, {"thresholding": True, "clip_sample": False}])
def test_gradient_through_clipping_and_thresholding(transform: dict[str, Any]) -> None:
    scheduler, _ = pair(transform, 10, widen=False)
    x, m = inputs(torch.float64, 6)
    x = x * 3  # some x0 entries outside the clip range

    def density(model_output: torch.Tensor) -> torch.Tensor:
        return ddim_step_with_logprob(scheduler, model_output, 501, x, 1.0, prev_sample=x + 0.1)[1]

    assert torch.autograd.gradcheck(density, (m.clone().requires_grad_(True),))


def test_tensor_timesteps_compile_to_one_graph() -> None:
    import torch._dynamo

    scheduler, _ = pair({"clip_sample": True}, 10, widen=False)
    x, m = inputs(torch.float32, 7)
    scored = x + 0.1 * m
    timesteps = torch.tensor([901, 501, 101])
    torch._dynamo.reset()

    def step(model_output: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return ddim_step_with_logprob(scheduler, model_output, t, x, 1.0, prev_sample=scored)[1]

    compiled = torch.compile(step, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(m, timesteps), step(m, timesteps))


def test_errors_name_the_argument() -> None:
    scheduler = ddim.DDIMScheduler()
    x, m = inputs(torch.float32, 8)
    with pytest.raises(ValueError, match=r"before scheduler\.set_timesteps"):
        ddim_step_with_logprob(scheduler, m, 501, x, 1.0)
    scheduler.set_timesteps(10)
    with pytest.raises(ValueError, match=r"eta=0\.0 makes the step deterministic"):
        ddim_step_with_logprob(scheduler, m, 501, x)
    with pytest.raises(ValueError, match="either generator or prev_sample"):
        ddim_step_with_logprob(scheduler, m, 501, x, 1.0, generator=torch.Generator(), prev_sample=x)
    with pytest.raises(ValueError, match="prev_sample shape"):
        ddim_step_with_logprob(scheduler, m, 501, x, 1.0, prev_sample=x[:1])
    with pytest.raises(TypeError, match="prev_sample must be a floating-point tensor"):
        ddim_step_with_logprob(scheduler, m, 501, x, 1.0, prev_sample=x.long())
    with pytest.raises(ValueError, match=r"reduction='max' is not"):
        ddim_step_with_logprob(scheduler, m, 501, x, 1.0, reduction="max")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="scheduler must be a ddim DDIMScheduler"):
        ddim_step_with_logprob(diffusers.DDIMScheduler(), m, 501, x, 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"eta=-1\.0 is out of range"):
        ddim_step_with_logprob(scheduler, m, 501, x, -1.0)


@settings(max_examples=40, deadline=None)
@given(
    eta=st.floats(0.05, 1.0),
    prediction_type=st.sampled_from(["epsilon", "sample", "v_prediction"]),
    index=st.integers(0, 9),
)
def test_property_drawn_samples_score_as_the_standard_normal_they_came_from(
    eta: float, prediction_type: str, index: int
) -> None:
    """x_prev = mu + sigma z, so log p(x_prev) = -z^2 / 2 - log sigma - log sqrt(2 pi) per element."""
    scheduler = ddim.DDIMScheduler(clip_sample=False, prediction_type=prediction_type, set_alpha_to_one=False)
    scheduler.set_timesteps(10)
    t = int(scheduler.timesteps[index])
    prev = max(t - 100, 0)  # DDPO's clamped landing
    a, a_prev = scheduler.alphas_cumprod.double()[t], scheduler.alphas_cumprod.double()[prev]
    sigma = eta * float(((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt())
    if sigma == 0.0:  # the last step from t = 0 lands on t = 0 itself: refused (tested above)
        return
    x, m = inputs(torch.float64, index)
    z = randn_tensor(SHAPE, generator=torch.Generator().manual_seed(index), dtype=torch.float64)
    _, log_prob = ddim_step_with_logprob(
        scheduler, m, t, x, eta, generator=torch.Generator().manual_seed(index), reduction="none"
    )
    expected = -(z**2) / 2 - math.log(sigma) - 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(log_prob, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: checks the absence of device syncs directly")
def test_cuda_log_prob_with_device_timesteps_never_syncs() -> None:
    scheduler, _ = pair({"clip_sample": True}, 10, widen=False)
    x, m = (t.float().cuda() for t in inputs(torch.float64, 9))
    scored = x + 0.1 * m
    timesteps = torch.tensor([901, 501, 101], device="cuda")
    ddim_step_with_logprob(scheduler, m, timesteps, x, 1.0, prev_sample=scored)  # uploads the tables
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _, log_prob = ddim_step_with_logprob(scheduler, m.requires_grad_(True), timesteps, x, 1.0, prev_sample=scored)
        log_prob.sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    _, expected = ddim_step_with_logprob(
        scheduler, m.detach().cpu(), torch.tensor([901, 501, 101]), x.cpu(), 1.0, prev_sample=scored.cpu()
    )
    torch.testing.assert_close(log_prob.detach().cpu(), expected, rtol=1e-5, atol=1e-5)
