"""DDIM of the peers side by side: diffusers', ours (scheduler loop, ``ddim.sample``, the k-diffusion form),
k-diffusion's and azula's, on one exact model, grid and noise, interleaved in one process.

The model is the exact predictor of one Gaussian (``ddim.analytic``), so the DDIM ODE's exact solution
(``gaussian_flow``) is known. The grid is diffusers' ``leading`` spacing with T divisible by N, where every
step lands on the next grid point, so all forms walk the same sigmas. Printed per implementation: the max
difference from our scheduler loop, the max error against the exact ODE solution, and the cost per step
(medians of interleaved repetitions). A peer that is not installed is skipped, with the reason.

    python benchmarks/peers.py [--steps 50] [--shape 4 64] [--reps 7]
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

import torch

import ddim
from common import interleaved_medians
from ddim.analytic import GaussianMixtureModel, gaussian_flow
from ddim.k_diffusion import Denoiser, sample_ddim, scheduler_sigmas

MEAN, STD = 0.5, 0.3


def implementations(
    steps: int, x_T: torch.Tensor, model: GaussianMixtureModel, scheduler: ddim.DDIMScheduler
) -> dict[str, Callable[[], torch.Tensor] | str]:
    """Name -> a function running the whole loop (or the reason it is skipped)."""
    scheduler.set_timesteps(steps)
    grid = [int(t) for t in scheduler.timesteps]
    rows = torch.zeros(x_T.shape[0], dtype=torch.int64)

    def loop(stepper: Any) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            x = x_T
            for t in grid:
                x = stepper.step(model(x, rows.fill_(t)), t, x).prev_sample
            return x

        return run

    found: dict[str, Callable[[], torch.Tensor] | str] = {"ours, scheduler loop": loop(scheduler)}
    found["ours, ddim.sample"] = lambda: ddim.sample(model, scheduler, noise=x_T, num_inference_steps=steps)
    sigmas = scheduler_sigmas(scheduler).to(x_T.dtype)
    denoiser = Denoiser(model, scheduler)
    x_sigma = x_T * math.sqrt(1 + float(sigmas[0]) ** 2)
    found["ours, k-diffusion form"] = lambda: sample_ddim(denoiser, x_sigma, sigmas, disable=True)
    try:
        import diffusers

        theirs = diffusers.DDIMScheduler.from_config(scheduler.config)
        theirs.set_timesteps(steps)
        found["diffusers"] = loop(theirs)
    except ImportError as error:
        found["diffusers"] = f"not installed ({error})"
    try:
        from k_diffusion.external import DiscreteEpsDDPMDenoiser
        from k_diffusion.sampling import sample_euler

        wrapped = DiscreteEpsDDPMDenoiser(model, scheduler.alphas_cumprod, quantize=True)
        found["k-diffusion (Euler = DDIM at eta 0)"] = lambda: sample_euler(wrapped, x_sigma, sigmas, disable=True)
    except Exception as error:
        found["k-diffusion (Euler = DDIM at eta 0)"] = f"skipped ({type(error).__name__}: {error})"
    try:
        import azula  # noqa: F401

        found["azula"] = "skipped (installed, but no adapter to its denoiser interface is written here)"
    except ImportError as error:
        found["azula"] = f"not installed ({error})"
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--shape", type=int, nargs="+", default=[4, 64])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scheduler = ddim.DDIMScheduler(clip_sample=False)  # leading spacing, T = 1000
    if 1000 % args.steps:
        raise SystemExit(f"--steps {args.steps}: use a divisor of 1000 (every step then lands on the grid)")
    shape = tuple(args.shape)
    model = GaussianMixtureModel(scheduler.alphas_cumprod, torch.full((1, *shape[1:]), MEAN), STD)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    found = implementations(args.steps, x_T, model, scheduler)
    runnable = {name: fn for name, fn in found.items() if callable(fn)}
    first = float(scheduler.alphas_cumprod[int(scheduler.timesteps[0])])
    exact = gaussian_flow(x_T, first, 1.0, MEAN, STD)
    reference = runnable["ours, scheduler loop"]()
    seconds = interleaved_medians(list(runnable.values()), torch.device("cpu"), args.reps, budget_s=0.05, cap=50)
    base = seconds[0]
    print(f"{args.steps} steps, shape {shape}, float32, {args.threads} thread(s); exact model: one Gaussian")
    print("| implementation | max diff vs ours | max error vs exact ODE | us per step | vs our loop |")
    print("|---|---|---|---|---|")
    for (name, fn), t in zip(runnable.items(), seconds, strict=True):
        out = fn()
        diff = float((out.double() - reference.double()).abs().max())
        error = float((out.double() - exact).abs().max())
        print(f"| {name} | {diff:.2e} | {error:.2e} | {t / args.steps * 1e6:.1f} | {t / base:.2f}x |")
    for name, reason in found.items():
        if not callable(reason):
            print(f"| {name} | {reason} | | | |")


if __name__ == "__main__":
    main()
