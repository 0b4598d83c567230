"""Inversion (diffusers-compatible ``DDIMInverseScheduler`` and the exact-reverse ``invert``) and slerp."""

from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ddim
from ddim.analytic import GaussianMixtureModel

CONFIGS = [
    {},
    {"set_alpha_to_one": False, "steps_offset": 1, "beta_schedule": "scaled_linear", "beta_end": 0.012},
    {"timestep_spacing": "trailing", "clip_sample": False, "prediction_type": "v_prediction"},
    {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
    {
        "prediction_type": "sample",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "beta_schedule": "squaredcos_cap_v2",
    },
    {"clip_sample_range": 0.5, "num_train_timesteps": 500},
]


def diffusers_inverse(**config):
    from diffusers import DDIMInverseScheduler

    return DDIMInverseScheduler(**config)


def toy_model(x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
    """A fixed non-linear 'network' (outputs of any prediction type, any scale)."""
    return torch.sin(2 * x + float(t) / 100) * 0.8


# ----------------------------------------------------------------------------- DDIMInverseScheduler
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("n", [10, 7, 50])
def test_full_inversion_loop_equals_diffusers(config: dict, n: int) -> None:
    ours, reference = ddim.DDIMInverseScheduler(**config), diffusers_inverse(**config)
    ours.set_timesteps(n)
    reference.set_timesteps(n)
    assert torch.equal(ours.timesteps, reference.timesteps)
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(n))
    for t in ours.timesteps:
        # Both step from the reference trajectory, so float32 rounding (ours derives coefficients in
        # float64) is compared per step instead of being amplified along the loop.
        out, ref = ours.step(toy_model(x, t), t, x), reference.step(toy_model(x, t), t, x)
        scale = 1 + float(ref.prev_sample.abs().max())
        torch.testing.assert_close(out.pred_original_sample, ref.pred_original_sample, rtol=1e-5, atol=1e-5 * scale)
        torch.testing.assert_close(out.prev_sample, ref.prev_sample, rtol=1e-5, atol=1e-5 * scale)
        x = ref.prev_sample


@pytest.mark.parametrize(
    ("config", "expected_sum", "expected_mean"),
    [
        # Reference values of diffusers' tests/schedulers/test_scheduler_ddim_inverse.py (full_loop_* tests).
        ({}, 671.6816, 0.8746),
        ({"prediction_type": "v_prediction"}, 1394.2185, 1.8154),
        ({"set_alpha_to_one": True, "beta_start": 0.01}, 539.9622, 0.7031),
        ({"set_alpha_to_one": False, "beta_start": 0.01}, 542.6722, 0.7066),
    ],
)
def test_diffusers_full_loop_references(config: dict, expected_sum: float, expected_mean: float) -> None:
    scheduler = ddim.DDIMInverseScheduler(**{"clip_sample": True, **config})
    scheduler.set_timesteps(10)
    num = 4 * 3 * 8 * 8
    sample = (torch.arange(num).reshape(3, 8, 8, 4) / num).permute(3, 0, 1, 2)  # diffusers' dummy_sample_deter
    for t in scheduler.timesteps:
        residual = sample * t / (t + 1)  # diffusers' dummy_model
        sample = scheduler.step(residual, t, sample).prev_sample
    assert abs(float(sample.abs().sum()) - expected_sum) < 1e-2
    assert abs(float(sample.abs().mean()) - expected_mean) < 1e-3


def test_attributes_and_config_match_diffusers(tmp_path) -> None:
    ours, reference = ddim.DDIMInverseScheduler(set_alpha_to_one=False), diffusers_inverse(set_alpha_to_one=False)
    assert set(ours.config) - {"_use_default_values"} <= set(reference.config) | {"_use_default_values"}
    assert {k for k in reference.config if not k.startswith("_")} == {k for k in ours.config if not k.startswith("_")}
    assert torch.equal(ours.alphas_cumprod, reference.alphas_cumprod)
    assert float(ours.initial_alpha_cumprod) == float(reference.initial_alpha_cumprod)
    assert (len(ours), ours.order, ours.init_noise_sigma) == (1000, 1, 1.0)
    assert torch.equal(ours.timesteps, reference.timesteps)  # before set_timesteps: 0..T-1
    x = torch.ones(2)
    assert ours.scale_model_input(x, 5) is x
    ours.save_config(tmp_path)
    loaded = diffusers_inverse().from_pretrained(tmp_path)
    assert loaded.config.set_alpha_to_one is False
    assert ddim.DDIMInverseScheduler.from_pretrained(tmp_path).config.set_alpha_to_one is False


def test_trailing_grid_keeps_exactly_n_timesteps() -> None:
    """Deviation: for N = 61 diffusers' trailing inverse grid gains a leading -1 (an invalid timestep)."""
    ours, reference = (
        ddim.DDIMInverseScheduler(timestep_spacing="trailing"),
        diffusers_inverse(timestep_spacing="trailing"),
    )
    ours.set_timesteps(61)
    reference.set_timesteps(61)
    assert reference.timesteps[0] == -1 and len(reference.timesteps) == 62
    assert ours.timesteps.tolist() == reference.timesteps[1:].tolist()


def test_from_a_sampling_scheduler_config() -> None:
    sampler = ddim.DDIMScheduler(set_alpha_to_one=False, steps_offset=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # thresholding etc. are not inverse-scheduler arguments
        inverse = ddim.DDIMInverseScheduler.from_config(sampler.config)
    assert inverse.config.steps_offset == 1 and inverse.config.set_alpha_to_one is False


def test_inverse_step_beyond_the_grid_and_bad_spacing() -> None:
    inverse = ddim.DDIMInverseScheduler()
    inverse.set_timesteps(10)
    with pytest.raises(ValueError, match="timestep=950 is beyond the inversion grid, whose last timestep is 900"):
        inverse.step(torch.zeros(2), 950, torch.zeros(2))
    with pytest.raises(ValueError, match="timestep=901 is beyond the inversion grid"):
        inverse.step(torch.zeros(2), torch.tensor(901), torch.zeros(2))
    with pytest.raises(ValueError, match="step\\(\\) called before set_timesteps"):
        ddim.DDIMInverseScheduler().step(torch.zeros(2), 0, torch.zeros(2))
    with pytest.raises(ValueError, match="timestep_spacing='linspace' is not supported"):
        ddim.DDIMInverseScheduler(timestep_spacing="linspace")


# ----------------------------------------------------------------------------- invert
def mixture(scheduler: ddim.DDIMScheduler, prediction_type: str = "epsilon") -> GaussianMixtureModel:
    means = torch.tensor([[1.0, 0.0, -0.5], [-1.0, 0.5, 0.5]])
    return GaussianMixtureModel(scheduler.alphas_cumprod, means, [0.2, 0.3], prediction_type=prediction_type)


def reconstruction_error(model, scheduler, x0: torch.Tensor, n: int, iterations: int = 0) -> float:
    x_t = ddim.invert(model, scheduler, x0, num_inference_steps=n, fixed_point_iterations=iterations)
    back = ddim.sample(model, scheduler, noise=x_t, num_inference_steps=n, progress=False)
    return float(((back - x0) ** 2).mean())


def test_reconstruction_error_falls_with_n_on_the_exact_model() -> None:
    scheduler = ddim.DDIMScheduler(clip_sample=False, timestep_spacing="trailing", prev_timestep_from_grid=True)
    model = mixture(scheduler)
    x0 = model.sample_data(64, torch.Generator().manual_seed(0))
    errors = [reconstruction_error(model, scheduler, x0, n) for n in (10, 20, 50, 100, 200)]
    assert all(b < a for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] < 0.05 * errors[0]
    # Fixed-point refinement makes each inverse step exact: reconstruction to rounding error.
    assert reconstruction_error(model, scheduler, x0, 100, iterations=6) < 1e-6 * errors[3]


@pytest.mark.parametrize("prediction_type", ["sample", "v_prediction"])
def test_invert_is_the_same_for_every_prediction_type(prediction_type: str) -> None:
    scheduler = ddim.DDIMScheduler(clip_sample=False)
    eps_model, other = mixture(scheduler), mixture(scheduler, prediction_type)
    x0 = eps_model.sample_data(16, torch.Generator().manual_seed(1))
    expected = ddim.invert(eps_model, scheduler, x0, num_inference_steps=20)
    other_scheduler = ddim.DDIMScheduler(clip_sample=False, prediction_type=prediction_type)
    got = ddim.invert(other, other_scheduler, x0, num_inference_steps=20)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("from_grid", [True, False])
def test_invert_walks_the_exact_reverse_of_the_sampling_grid(from_grid: bool) -> None:
    """Each inverse step solves the sampling step it mirrors (whatever it lands on): at its fixed point it
    reproduces the sampling trajectory."""
    scheduler = ddim.DDIMScheduler(clip_sample=False, timestep_spacing="linspace", prev_timestep_from_grid=from_grid)
    # Wide components keep each step's fixed-point map a contraction (steep mixtures can have several inverses).
    model = GaussianMixtureModel(scheduler.alphas_cumprod, torch.tensor([[1.0, 0.0, -0.5], [-1.0, 0.5, 0.5]]), 0.5)
    x_t = torch.randn(8, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    forward = ddim.sample(model, scheduler, noise=x_t, num_inference_steps=15, return_intermediates=True)
    _, backward = ddim.invert(
        model, scheduler, forward.samples, num_inference_steps=15, fixed_point_iterations=30, return_trajectory=True
    )
    for expected, got in zip(reversed(forward.intermediates), backward, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-7)


def test_invert_with_a_custom_grid_and_errors() -> None:
    scheduler = ddim.DDIMScheduler(clip_sample=False)
    model = mixture(scheduler)
    x0 = torch.zeros(2, 3, dtype=torch.float64)
    x_t = ddim.invert(model, scheduler, x0, timesteps=[800, 400, 100])
    assert scheduler.timesteps.tolist() == [800, 400, 100] and x_t.shape == x0.shape
    with pytest.raises(ValueError, match="invert needs clip_sample=False and thresholding=False"):
        ddim.invert(model, ddim.DDIMScheduler(), x0)
    with pytest.raises(ValueError, match="fixed_point_iterations=-1 is out of range"):
        ddim.invert(model, scheduler, x0, fixed_point_iterations=-1)
    for too_many in (1001, 10**20):  # a count that would run for ever is refused before any model call
        with pytest.raises(ValueError, match=f"fixed_point_iterations={too_many} is out of range.*0..1000"):
            ddim.invert(model, scheduler, x0, fixed_point_iterations=too_many)
    assert ddim.invert(model, scheduler, x0, timesteps=[800, 400], fixed_point_iterations=1000).isfinite().all()


# ----------------------------------------------------------------------------- slerp
def test_slerp_endpoints_and_great_circle() -> None:
    x0 = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    x1 = torch.tensor([[0.0, 1.0], [0.0, 2.0]])
    torch.testing.assert_close(ddim.slerp(x0, x1, 0.0), x0)
    torch.testing.assert_close(ddim.slerp(x0, x1, 1.0), x1)
    # Between orthogonal vectors of equal norm, slerp(w) is at angle w * pi / 2 with the norm kept.
    w = 0.3
    expected = torch.tensor([[math.cos(w * math.pi / 2), math.sin(w * math.pi / 2)]]) * torch.tensor([[1.0], [2.0]])
    torch.testing.assert_close(ddim.slerp(x0, x1, w), expected)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), w=st.floats(0, 1))
def test_slerp_keeps_gaussian_latents_on_the_sphere(seed: int, w: float) -> None:
    g = torch.Generator().manual_seed(seed)
    x0, x1 = (
        torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64),
        torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64),
    )
    x0 = x0 / x0.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
    x1 = x1 / x1.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
    norms = ddim.slerp(x0, x1, w).flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(3, dtype=torch.float64))


def test_slerp_weights_tensor_parallel_inputs_half_precision_and_errors() -> None:
    x0, x1 = torch.randn(2, 5), torch.randn(2, 5)
    stacked = ddim.slerp(x0, x1, torch.linspace(0, 1, 4))
    assert stacked.shape == (4, 2, 5)
    torch.testing.assert_close(stacked[0], x0)
    torch.testing.assert_close(ddim.slerp(x0, 2 * x0, 0.5), 1.5 * x0)  # parallel: linear interpolation
    half = ddim.slerp(x0.half(), x1.half(), 0.5)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), ddim.slerp(x0, x1, 0.5), rtol=1e-2, atol=1e-2)
    with pytest.raises(ValueError, match="must be equal"):
        ddim.slerp(x0, torch.randn(3, 5), 0.5)
    with pytest.raises(ValueError, match=r"weight=1\.5 must be"):
        ddim.slerp(x0, x1, 1.5)


def test_invert_shows_a_progress_bar_only_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    scheduler = ddim.DDIMScheduler(clip_sample=False)
    model = mixture(scheduler)
    x0 = torch.zeros(2, 3, dtype=torch.float64)
    quiet = ddim.invert(model, scheduler, x0, num_inference_steps=4)
    assert capsys.readouterr().err == ""
    shown = ddim.invert(model, scheduler, x0, num_inference_steps=4, progress=True)
    assert "DDIM inversion" in capsys.readouterr().err
    torch.testing.assert_close(shown, quiet, rtol=0, atol=0)
