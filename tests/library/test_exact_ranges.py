"""EDICT's p and BDIA's gamma are allowed exactly where the float64 round trip holds, and latents are re-checked
when they are sampled (a pickled or hand-changed latent skips ``__post_init__``)."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ddim
from ddim.analytic import GaussianMixtureModel
from ddim.exact_inversion import MAX_AMPLIFICATION, BDIALatent, EDICTLatent

MEANS = torch.tensor([[1.0, -0.5], [-1.5, 0.5], [0.0, 2.0]], dtype=torch.float64)
STDS = torch.tensor([0.3, 0.5, 0.2], dtype=torch.float64)
BOUND = 1e-6  # the round trip's stated bound (data of unit scale)


def setup() -> tuple[ddim.DDIMScheduler, GaussianMixtureModel, torch.Tensor]:
    scheduler = ddim.DDIMScheduler(clip_sample=False, timestep_spacing="trailing")
    model = GaussianMixtureModel(scheduler.alphas_cumprod, MEANS, STDS)
    return scheduler, model, model.sample_data(8, torch.Generator().manual_seed(0))


def round_trip_error(method: str, value: float, steps: int) -> float:
    scheduler, model, x0 = setup()
    name = "p" if method == "edict" else "gamma"
    latent = ddim.invert(model, scheduler, x0, method=method, num_inference_steps=steps, **{name: value})
    return float((ddim.sample_exact(model, scheduler, latent) - x0).abs().max())


@settings(max_examples=60, deadline=None)
@given(
    method=st.sampled_from(["edict", "bdia"]),
    value=st.one_of(st.floats(1e-300, 1.0), st.floats(0.5, 1.0), st.sampled_from([1e-12, 0.1, 0.93, 1.0])),
    steps=st.integers(1, 60),
)
def test_property_every_allowed_value_round_trips_within_the_bound_or_raises(
    method: str, value: float, steps: int
) -> None:
    try:
        error = round_trip_error(method, value, steps)
    except ValueError as refusal:
        name = "p" if method == "edict" else "gamma"
        assert f"{name}={value!r} is out of range for {steps} steps; allowed values are in [" in str(refusal)
        return
    assert math.isfinite(error) and error < BOUND


def test_tiny_p_and_gamma_and_the_lossy_p_of_a_tenth_are_refused_with_the_allowed_range() -> None:
    with pytest.raises(ValueError, match=r"p=0\.1 is out of range for 50 steps; allowed values are in \[0\.79"):
        round_trip_error("edict", 0.1, 50)
    with pytest.raises(ValueError, match=r"p=1e-200 is out of range for 10 steps"):
        round_trip_error("edict", 1e-200, 10)
    with pytest.raises(ValueError, match=r"gamma=1e-08 is out of range for 10 steps; allowed values are in \[0\.07"):
        round_trip_error("bdia", 1e-8, 10)
    with pytest.raises(ValueError, match=r"p=0\.0 is out of range"):
        round_trip_error("edict", 0.0, 10)


@pytest.mark.slow
def test_the_paper_p_is_refused_on_a_thousand_steps_and_the_boundary_values_round_trip() -> None:
    with pytest.raises(
        ValueError,
        match=r"p=0\.93 is out of range for 1000 steps; allowed values are in \[0\.9886, 1\]: .* p\^-2000 = 10\^63",
    ):
        round_trip_error("edict", 0.93, 1000)
    p_min = MAX_AMPLIFICATION ** (-1 / 2000)
    gamma_min = MAX_AMPLIFICATION ** (-1 / 999)
    assert round_trip_error("edict", math.nextafter(p_min, 1.0), 1000) < BOUND
    assert round_trip_error("bdia", math.nextafter(gamma_min, 1.0), 1000) < BOUND


def latents() -> tuple[EDICTLatent, BDIALatent]:
    scheduler, model, x0 = setup()
    edict = ddim.invert(model, scheduler, x0, method="edict", num_inference_steps=5)
    bdia = ddim.invert(model, scheduler, x0, method="bdia", num_inference_steps=5)
    return edict, bdia


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("p", 7.0, r"p=7\.0 is out of range"),
        ("p", 0.01, r"p=0\.01 is out of range for 5 steps"),
        ("x", torch.zeros(8, 2, dtype=torch.long), "x must be a floating-point tensor"),
        ("y", torch.zeros(3, 2, dtype=torch.float64), r"x shape \(8, 2\) and y shape \(3, 2\) must be equal"),
        ("dtype", torch.int64, "dtype must be a floating-point torch.dtype"),
        ("steps", (), "steps must be a non-empty tuple of GridStep"),
    ],
)
def test_a_tampered_edict_latent_is_refused_when_sampled(field: str, value: object, message: str) -> None:
    scheduler, model, _ = setup()
    edict, _ = latents()
    restored = pickle.loads(pickle.dumps(edict))  # unpickling skips __post_init__
    object.__setattr__(restored, field, value)
    with pytest.raises((ValueError, TypeError), match=message):
        ddim.sample_exact(model, scheduler, restored)
    with pytest.raises((ValueError, TypeError), match=message):
        EDICTLatent(**{**vars(edict), field: value})  # the same check when built


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("gamma", -1.0, r"gamma=-1\.0 is out of range"),
        ("gamma", 1e-30, r"gamma=1e-30 is out of range for 5 steps"),
        ("x_next", torch.zeros(8, 2, dtype=torch.int32), "x_next must be a floating-point tensor"),
    ],
)
def test_a_tampered_bdia_latent_is_refused_when_sampled(field: str, value: object, message: str) -> None:
    scheduler, model, _ = setup()
    _, bdia = latents()
    restored = pickle.loads(pickle.dumps(bdia))
    object.__setattr__(restored, field, value)
    with pytest.raises((ValueError, TypeError), match=message):
        ddim.sample_exact(model, scheduler, restored)


def test_an_untampered_pickled_latent_still_round_trips() -> None:
    scheduler, model, x0 = setup()
    for latent in latents():
        restored = pickle.loads(pickle.dumps(latent))
        torch.testing.assert_close(ddim.sample_exact(model, scheduler, restored), x0, rtol=0, atol=BOUND)
