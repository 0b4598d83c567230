"""Half precision: fp16/bf16 steps are computed in float32 from float64 coefficients and rounded once.

References are float64 computations of the same step; diffusers' ``step`` (which computes in the
input's precision) is run on the same inputs for comparison. The oracle model is exact for Gaussian
data x0 ~ N(MU, SIGMA^2): E[x0 | x_t] = MU + sqrt(a) SIGMA^2 (x_t - sqrt(a) MU) / (a SIGMA^2 + 1 - a).
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler as DiffusersDDIM

from ddim import DDIMScheduler

MU, SIGMA = 0.3, 0.5
HALVES = [torch.float16, torch.bfloat16]
CONFIGS = {
    "eps-clip": {},
    "sd": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "clip_sample": False},
    "v": {"prediction_type": "v_prediction", "clip_sample": False},
    "sample": {"prediction_type": "sample", "clip_sample": False},
}


def oracle(alphas: torch.Tensor, kind: str, x: torch.Tensor, t: int) -> torch.Tensor:
    a = float(alphas[t])
    xt = x.double()
    x0 = MU + math.sqrt(a) * SIGMA**2 * (xt - math.sqrt(a) * MU) / (a * SIGMA**2 + 1 - a)
    eps = (xt - math.sqrt(a) * x0) / math.sqrt(1 - a)
    out = {"epsilon": eps, "sample": x0, "v_prediction": math.sqrt(a) * eps - math.sqrt(1 - a) * x0}[kind]
    return out.to(x.dtype)


@pytest.mark.parametrize("dtype", HALVES)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_one_step_is_rounded_once(dtype: torch.dtype, config: str) -> None:
    """Every element is within one ulp of the float64 step on the same inputs."""
    ours, exact = DDIMScheduler(**CONFIGS[config]), DDIMScheduler(**CONFIGS[config])
    ours.set_timesteps(50)
    exact.set_timesteps(50)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 4, 16, 16, generator=g).to(dtype)
    z = torch.randn(4, 4, 16, 16, generator=g).to(dtype)
    eps = float(torch.finfo(dtype).eps)
    for t in (int(ours.timesteps[0]), int(ours.timesteps[25]), int(ours.timesteps[-1])):
        m = oracle(ours.alphas_cumprod.double(), ours.config.prediction_type, x, t)
        got = ours.step(m, t, x, eta=1.0, variance_noise=z)
        want = exact.step(m.double(), t, x.double(), eta=1.0, variance_noise=z.double())
        for a, b in zip(got.to_tuple(), want.to_tuple(), strict=True):
            assert a.dtype == dtype
            # one rounding to the half type (<= eps/2 relative, or half a subnormal spacing), plus float32
            # arithmetic: far below eps except where the result cancels to ~0 (allowance 1e-6 of the scale)
            subnormal = torch.finfo(dtype).smallest_normal * eps
            bound = eps * b.abs() + subnormal + 1e-6 * float(b.abs().max())
            assert ((a.double() - b).abs() <= bound).all()


def trajectory_errors(dtype: torch.dtype, config: str, eta: float) -> dict[str, float]:
    """Relative errors after 50 steps vs float64: ours, diffusers', and the floor (exact steps whose
    results alone are rounded to ``dtype``)."""
    steps, shape = 50, (2, 3, 16, 16)
    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(shape, generator=g).to(dtype)
    noises = [torch.randn(shape, generator=g).to(dtype) for _ in range(steps)]
    results = {}
    for name, cls, start, rounded in (
        ("reference", DDIMScheduler, x_t.double(), False),
        ("floor", DDIMScheduler, x_t.double(), True),
        ("ours", DDIMScheduler, x_t, False),
        ("diffusers", DiffusersDDIM, x_t, False),
    ):
        s = cls(**CONFIGS[config])
        s.set_timesteps(steps)
        x = start
        for i, t in enumerate(s.timesteps.tolist()):
            kind = s.config.prediction_type
            m = oracle(s.alphas_cumprod.double(), kind, x.to(dtype) if rounded else x, t)
            x = s.step(m.to(x.dtype), t, x, eta=eta, variance_noise=noises[i].to(x.dtype) if eta else None).prev_sample
            if rounded:
                x = x.to(dtype).double()
        results[name] = x
    ref = results.pop("reference")
    return {k: float((v.double() - ref).norm() / ref.norm()) for k, v in results.items()}


@pytest.mark.parametrize("dtype", HALVES)
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_trajectory_error_is_at_the_rounding_floor(dtype: torch.dtype, eta: float) -> None:
    """50 steps in half precision: ours is no worse than storing exact steps in ``dtype`` (the floor)."""
    errors = trajectory_errors(dtype, "eps-clip", eta)
    assert errors["ours"] <= 1.05 * errors["floor"], errors
    if eta > 0:  # with noise, diffusers' extra roundings more than double the error (measured ~2.2x)
        assert errors["ours"] <= 0.6 * errors["diffusers"], errors


def test_the_one_ulp_bound_is_not_blind() -> None:
    """diffusers' step, computed in fp16 itself, breaks the bound above on the same inputs."""
    theirs, exact = DiffusersDDIM(), DDIMScheduler()
    theirs.set_timesteps(50)
    exact.set_timesteps(50)
    x = torch.randn(4, 4, 16, 16, generator=torch.Generator().manual_seed(0)).half()
    t = int(exact.timesteps[0])
    m = oracle(exact.alphas_cumprod.double(), "epsilon", x, t)
    got = theirs.step(m, t, x).pred_original_sample.double()
    want = exact.step(m.double(), t, x.double()).pred_original_sample
    eps = float(torch.finfo(torch.float16).eps)
    assert ((got - want).abs() > eps * want.abs() + 1e-6 * float(want.abs().max())).any()
