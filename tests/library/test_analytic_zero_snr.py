"""The analytic mixture model at zero SNR (abar = 0, the last timestep of a rescaled schedule): every prediction
type is finite and equals its limit there, x_t = eps, so eps* = x_t, x0* = E[x_0] and v* = -E[x_0]."""

from __future__ import annotations

import diffusers
import pytest
import torch

import ddim
from ddim.analytic import GaussianMixtureModel
from ddim.prediction import model_output_from

MEANS = torch.tensor([[1.0, -0.5], [-1.5, 0.5], [0.0, 2.0]], dtype=torch.float64)
STDS = torch.tensor([0.3, 0.5, 0.2], dtype=torch.float64)
WEIGHTS = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
DATA_MEAN = (WEIGHTS.unsqueeze(1) * MEANS).sum(0)  # E[x_0] = sum_k w_k mu_k, written out


def zero_snr_scheduler(prediction_type: str) -> ddim.DDIMScheduler:
    return ddim.DDIMScheduler(
        rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type=prediction_type, clip_sample=False
    )


def test_the_rescaled_schedule_reaches_zero_snr_at_its_last_timestep() -> None:
    assert float(zero_snr_scheduler("epsilon").alphas_cumprod[999]) == 0.0


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_predictions_at_zero_snr_are_their_limits(prediction_type: str) -> None:
    scheduler = zero_snr_scheduler(prediction_type)
    model = GaussianMixtureModel(scheduler.alphas_cumprod, MEANS, STDS, WEIGHTS, prediction_type)
    x = 3 * torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = model(x, torch.full((16,), 999))
    expected = {"epsilon": x, "sample": DATA_MEAN.expand(16, 2), "v_prediction": -DATA_MEAN.expand(16, 2)}
    torch.testing.assert_close(out, expected[prediction_type], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model(x.float(), 999), expected[prediction_type].float())


@pytest.mark.parametrize("prediction_type", ["sample", "v_prediction"])
@pytest.mark.parametrize("t", [0, 1, 500, 998])
def test_direct_predictions_equal_the_converted_epsilon_where_abar_is_positive(prediction_type: str, t: int) -> None:
    scheduler = zero_snr_scheduler(prediction_type)
    model = GaussianMixtureModel(scheduler.alphas_cumprod, MEANS, STDS, WEIGHTS, prediction_type)
    x = 2 * torch.randn(8, 2, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
    alpha = model.alpha_at(t, x)
    converted = model_output_from(x, model.epsilon(x, alpha), alpha, prediction_type)
    torch.testing.assert_close(model(x, t), converted, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("prediction_type", ["sample", "v_prediction"])
def test_sampling_a_trailing_zero_snr_grid_is_finite(prediction_type: str) -> None:
    scheduler = zero_snr_scheduler(prediction_type)
    model = GaussianMixtureModel(scheduler.alphas_cumprod, MEANS, STDS, WEIGHTS, prediction_type)
    out = ddim.sample(model, scheduler, (64, 2), num_inference_steps=20, generator=torch.Generator().manual_seed(1))
    assert bool(out.isfinite().all())
    assert abs(float(out.mean(0)[1]) - float(DATA_MEAN[1])) < 0.5  # and lands on the data, not somewhere else


def test_epsilon_prediction_at_zero_snr_gives_nan_as_diffusers_does() -> None:
    """A deliberate match (docs/compatibility.md): x_0 = (x - sqrt(1 - abar) eps) / sqrt(abar) is 0/0 at abar = 0."""
    ours = zero_snr_scheduler("epsilon")
    theirs = diffusers.DDIMScheduler(rescale_betas_zero_snr=True, timestep_spacing="trailing", clip_sample=False)
    ours.set_timesteps(20)
    theirs.set_timesteps(20)
    model = GaussianMixtureModel(ours.alphas_cumprod, MEANS, STDS, WEIGHTS, "epsilon")
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(2))
    eps = model(x, 999)
    assert bool(eps.isfinite().all())  # the model's output is defined; the step's x_0 from it is not
    assert bool(ours.step(eps, 999, x).prev_sample.isnan().all())
    assert bool(theirs.step(eps, 999, x).prev_sample.isnan().all())
