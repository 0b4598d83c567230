"""EDICT's update pinned to the paper's equations on known numbers, not only by round trips.

Wallace, Gokul & Naik, "EDICT: Exact Diffusion Inversion via Coupled Transformations" (arXiv 2211.12446), eq. 14:
with the eta = 0 DDIM transfer T(z, eps) = sqrt(abar') (z - sqrt(1 - abar) eps) / sqrt(abar) + sqrt(1 - abar') eps,
one denoising step is

    x^i = T(x, eps(y)),   y^i = T(y, eps(x^i)),   x' = p x^i + (1 - p) y^i,   y' = p y^i + (1 - p) x'

and inversion solves those lines in reverse order. Any step/inverse pair that is consistent passes a round trip;
these tests compare the numbers themselves. The grid (timesteps, alphas, landing) comes from diffusers' scheduler.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import diffusers
import pytest
import torch

import ddim
from ddim.exact_inversion import edict_step
from ddim.inversion_steps import GridStep

Eps = Callable[[torch.Tensor, int], torch.Tensor]


def ddim_transfer(z: torch.Tensor, eps: torch.Tensor, abar: float, abar_to: float) -> torch.Tensor:
    """The eta = 0 DDIM step from abar to abar_to through the predicted x0 (DDIM paper, eqs. 9 and 12)."""
    x0 = (z - math.sqrt(1 - abar) * eps) / math.sqrt(abar)
    return math.sqrt(abar_to) * x0 + math.sqrt(1 - abar_to) * eps


def paper_step(
    eps: Eps, x: torch.Tensor, y: torch.Tensor, t: int, abar: float, abar_to: float, p: float
) -> tuple[torch.Tensor, torch.Tensor]:
    x_inter = ddim_transfer(x, eps(y, t), abar, abar_to)
    y_inter = ddim_transfer(y, eps(x_inter, t), abar, abar_to)
    x_new = p * x_inter + (1 - p) * y_inter
    y_new = p * y_inter + (1 - p) * x_new
    return x_new, y_new


def paper_inverse_step(
    eps: Eps, x: torch.Tensor, y: torch.Tensor, t: int, abar: float, abar_to: float, p: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The lines of :func:`paper_step` solved for their inputs, last line first (the paper's inversion)."""
    y_inter = (y - (1 - p) * x) / p
    x_inter = (x - (1 - p) * y_inter) / p
    y_old = ddim_transfer(y_inter, eps(x_inter, t), abar_to, abar)  # T's inverse is T with the alphas swapped
    x_old = ddim_transfer(x_inter, eps(y_old, t), abar_to, abar)
    return x_old, y_old


def eps_of(z: torch.Tensor, t: int) -> torch.Tensor:
    """A nonlinear, timestep-dependent epsilon model with known values."""
    return torch.tanh(z) * (0.5 + t / 1000) + 0.1 * z


def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return eps_of(x, int(t[0]))


def diffusers_grid(n: int, **config: object) -> list[tuple[int, float, float]]:
    """(t, abar_t, abar_prev) of each sampling step on diffusers' grid, prev = t - T // n or the final alpha."""
    theirs = diffusers.DDIMScheduler(**config)
    theirs.set_timesteps(n)
    table = theirs.alphas_cumprod
    steps = []
    for t in theirs.timesteps.tolist():
        prev = t - theirs.config.num_train_timesteps // n
        steps.append((t, float(table[t]), float(table[prev] if prev >= 0 else theirs.final_alpha_cumprod)))
    return steps


def test_one_step_on_hand_computed_numbers() -> None:
    """abar = 0.64 -> 0.36: T(z, eps) = 0.75 z + 0.35 eps; eps(z) = z / 2 + 1; p = 0.75; (x, y) = (2, 4).

    x^i = 1.5 + 0.35 * 3 = 2.55,  y^i = 3 + 0.35 * 2.275 = 3.79625,
    x' = 0.75 * 2.55 + 0.25 * 3.79625 = 2.8615625,  y' = 0.75 * 3.79625 + 0.25 * 2.8615625 = 3.562578125.
    """
    step = GridStep(index=0, timestep=500, alpha=0.64, alpha_to=0.36)
    x, y = torch.tensor([2.0], dtype=torch.float64), torch.tensor([4.0], dtype=torch.float64)
    x_new, y_new = edict_step(lambda z, _: z / 2 + 1, x, y, step, 0.75)  # type: ignore[arg-type]
    assert float(x_new) == pytest.approx(2.8615625, abs=1e-12)
    assert float(y_new) == pytest.approx(3.562578125, abs=1e-12)


@pytest.mark.parametrize("p", [0.93, 0.6])
def test_one_step_equals_the_papers_equations(p: float) -> None:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64), torch.randn(2, 3, 4, generator=gen).double()
    t, abar, abar_to = diffusers_grid(10)[3]
    step = GridStep(index=3, timestep=t, alpha=abar, alpha_to=abar_to)
    got = edict_step(lambda z, s: eps_of(z, s.timestep), x, y, step, p)  # type: ignore[arg-type]
    expected = paper_step(eps_of, x, y, t, abar, abar_to, p)
    for ours, theirs in zip(got, expected, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("n", "p", "config"), [(4, None, {}), (6, 0.8, {"set_alpha_to_one": False})])
def test_sampling_from_noise_follows_the_papers_steps(n: int, p: float | None, config: dict[str, object]) -> None:
    """``ddim.sample_exact`` from x_T (x = y = x_T) against the written-out steps; p None is the paper's 0.93."""
    scheduler = ddim.DDIMScheduler(clip_sample=False, **config)  # type: ignore[arg-type]
    noise = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = ddim.sample_exact(model, scheduler, noise, method="edict", num_inference_steps=n, p=p)
    x = y = noise
    for t, abar, abar_to in diffusers_grid(n, clip_sample=False, **config):
        x, y = paper_step(eps_of, x, y, t, abar, abar_to, 0.93 if p is None else p)
    torch.testing.assert_close(got, x, rtol=1e-10, atol=1e-10)


def test_inversion_follows_the_papers_inverse_steps() -> None:
    """``ddim.invert(method="edict")`` against the paper's inversion written out, from x = y = x_0."""
    scheduler = ddim.DDIMScheduler(clip_sample=False)
    x0 = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    latent = ddim.invert(model, scheduler, x0, num_inference_steps=5, method="edict", p=0.9)
    x = y = x0
    for t, abar, abar_to in reversed(diffusers_grid(5, clip_sample=False)):
        x, y = paper_inverse_step(eps_of, x, y, t, abar, abar_to, 0.9)
    torch.testing.assert_close(latent.x, x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(latent.y, y, rtol=1e-10, atol=1e-10)
