"""``ddim.k_diffusion``: DDIM as a k-diffusion sampler equals ``ddim.sample`` on its grid (without k-diffusion)."""

from __future__ import annotations

import math

import pytest
import torch

import ddim
from ddim.analytic import GaussianMixtureModel
from ddim.k_diffusion import Denoiser, DiffusersModel, sample_ddim, scheduler_sigmas, sigma_of


def setup(prediction_type: str) -> tuple[ddim.DDIMScheduler, GaussianMixtureModel]:
    scheduler = ddim.DDIMScheduler(
        clip_sample=False, timestep_spacing="trailing", prev_timestep_from_grid=True, prediction_type=prediction_type
    )
    means = torch.tensor([[1.0, -1.0, 0.5], [-1.0, 0.5, 0.0]])
    return scheduler, GaussianMixtureModel(scheduler.alphas_cumprod, means, 0.4, prediction_type=prediction_type)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("eta", [0.0, 0.7])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_equals_ddim_sample_on_the_same_grid(prediction_type: str, eta: float, dtype: torch.dtype) -> None:
    scheduler, model = setup(prediction_type)
    x_T = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=dtype)
    ours = ddim.sample(model, scheduler, noise=x_T, num_inference_steps=12, eta=eta, generator=torch.Generator())
    sigmas = scheduler_sigmas(scheduler)
    assert sigmas[-1] == 0.0 and len(sigmas) == 13
    drawn = torch.Generator().manual_seed(torch.Generator().initial_seed())
    noise = lambda _s, _n: torch.randn(x_T.shape, generator=drawn, dtype=dtype)  # noqa: E731  ddim.sample's draws
    x = x_T * math.sqrt(1 + float(sigmas[0]) ** 2)  # x_T / sqrt(abar_0): k-diffusion's scaling
    theirs = sample_ddim(Denoiser(model, scheduler), x, sigmas.to(dtype), eta=eta, noise_sampler=noise, disable=True)
    tolerance = 1e-9 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(theirs, ours, rtol=tolerance, atol=tolerance)


def test_callback_gets_k_diffusions_keys() -> None:
    scheduler, model = setup("epsilon")
    scheduler.set_timesteps(4)
    seen: list[dict[str, object]] = []
    x = torch.randn(2, 3, dtype=torch.float64) * float(scheduler_sigmas(scheduler)[0])
    sample_ddim(Denoiser(model, scheduler), x, scheduler_sigmas(scheduler), callback=seen.append, disable=True)
    assert [entry["i"] for entry in seen] == [0, 1, 2, 3]
    assert set(seen[0]) == {"x", "i", "sigma", "sigma_hat", "denoised"}


def test_the_two_adapters_invert_each_other() -> None:
    scheduler, model = setup("v_prediction")
    back = DiffusersModel(Denoiser(model, scheduler), scheduler)
    x_t = torch.randn(4, 3, dtype=torch.float64)
    t = torch.tensor([900, 500, 100, 10])
    torch.testing.assert_close(back(x_t, t), model(x_t, t), rtol=1e-9, atol=1e-9)


def test_denoiser_is_the_models_x0() -> None:
    scheduler, model = setup("epsilon")
    t = 300
    a = float(scheduler.alphas_cumprod[t])
    x_t = torch.randn(3, 3, dtype=torch.float64)
    eps = model(x_t, torch.full((3,), t))
    want = (x_t - math.sqrt(1 - a) * eps) / math.sqrt(a)  # eq. 9
    got = Denoiser(model, scheduler)(x_t / math.sqrt(a), sigma_of(a))
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_an_off_grid_landing_and_bad_sigmas_are_refused() -> None:
    scheduler = ddim.DDIMScheduler(timestep_spacing="trailing")  # diffusers' rule: t - T // N, off this grid
    scheduler.set_timesteps(30)
    with pytest.raises(ValueError, match="lands off the grid"):
        scheduler_sigmas(scheduler)
    model = Denoiser(lambda x, t: x, scheduler)
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample_ddim(model, x, torch.tensor([1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match=r"eta=1.5 is out of range"):
        sample_ddim(model, x, torch.tensor([2.0, 0.0]), eta=1.5)


def test_the_denoiser_serves_other_batch_sizes_at_a_seen_sigma() -> None:
    scheduler, model = setup("epsilon")
    denoiser = Denoiser(model, scheduler)
    sigma = sigma_of(float(scheduler.alphas_cumprod[500]))
    for rows in (3, 5, 3):
        x = torch.randn(rows, 3, dtype=torch.float64)
        a = float(scheduler.alphas_cumprod[500])
        want = (x * math.sqrt(a) - math.sqrt(1 - a) * model(x * math.sqrt(a), torch.full((rows,), 500))) / math.sqrt(a)
        torch.testing.assert_close(denoiser(x, sigma), want, rtol=1e-9, atol=1e-9)
