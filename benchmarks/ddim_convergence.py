"""DDIM's first-order convergence and the reconstruction error of inversion, on exact and trained models.

Prints, and plots to ``--plot`` (default ``ddim_convergence.png``; needs matplotlib):

1. the error of DDIM (eta = 0) against the exact ODE solution for Gaussian data, versus the number
   of steps N, and the fitted log-log slope (first order: about -1);
2. the invert-then-sample reconstruction error (per-pixel MSE) versus N for a Gaussian mixture and,
   when ``ddim.app.digits`` and its weights are present, for the trained digits model (DDIM paper, Table 2);
3. the largest gap between an eta = 1 step and the DDPM posterior step.

Run: ``python benchmarks/ddim_convergence.py`` (about a minute on one CPU core).
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

import ddim
from ddim.analytic import GaussianMixtureModel, gaussian_flow
from ddim.sampling import Model

STEPS = [10, 20, 50, 100, 200, 500, 1000]
RECONSTRUCTION_STEPS = [10, 20, 50, 100, 200, 500]


def grid_scheduler(**config: object) -> ddim.DDIMScheduler:
    """trailing spacing with grid-based landing: every N starts at T - 1 and ends at abar = 1."""
    return ddim.DDIMScheduler(clip_sample=False, timestep_spacing="trailing", prev_timestep_from_grid=True, **config)


def convergence(mean: float = 0.5, std: float = 0.3) -> tuple[list[float], float]:
    scheduler = grid_scheduler()
    model = GaussianMixtureModel(scheduler.alphas_cumprod, [[mean]], std)
    x_t = torch.randn(1024, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = gaussian_flow(x_t, float(scheduler.alphas_cumprod[-1]), 1.0, mean, std)
    errors = []
    for n in STEPS:
        x0 = ddim.sample(model, scheduler, noise=x_t, num_inference_steps=n, progress=False)
        errors.append(float((x0 - exact).abs().max()))
    slope = float(np.polyfit(np.log(STEPS), np.log(errors), 1)[0])
    return errors, slope


def reconstruction(model: Model, scheduler: ddim.DDIMScheduler, x0: torch.Tensor, iterations: int = 0) -> list[float]:
    errors = []
    for n in RECONSTRUCTION_STEPS:
        x_t = ddim.invert(model, scheduler, x0, num_inference_steps=n, fixed_point_iterations=iterations)
        back = ddim.sample(model, scheduler, noise=x_t, num_inference_steps=n, progress=False)
        errors.append(float(((back - x0) ** 2).mean()))
    return errors


def digits_reconstruction() -> list[float] | None:
    try:
        from ddim.app import digits

        model, scheduler = digits.load_pretrained()
    except (ImportError, OSError, ValueError) as error:
        print(f"digits model unavailable ({error}); skipped")
        return None
    x0 = digits.load_digits_split().test_images[:64]
    scheduler = ddim.DDIMScheduler.from_config(
        scheduler.config, clip_sample=False, timestep_spacing="trailing", prev_timestep_from_grid=True
    )
    with torch.no_grad():
        return reconstruction(model, scheduler, x0)


def ddpm_gap() -> float:
    """max |eta = 1 DDIM step - DDPM posterior sample| over a 50-step grid, same noise."""
    scheduler = ddim.DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(50)
    model = GaussianMixtureModel(scheduler.alphas_cumprod, [[1.0, -1.0]], 0.3)
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = torch.randn(256, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    gap = 0.0
    for t in scheduler.timesteps.tolist()[:-1]:
        step = scheduler.step(model(x, torch.tensor([t])), t, x, eta=1.0, variance_noise=z)
        a, ap = float(scheduler.alphas_cumprod[t]), float(scheduler.alphas_cumprod[scheduler.previous_timestep(t)])
        beta = 1 - a / ap
        mean = math.sqrt(ap) * beta / (1 - a) * step.pred_original_sample + math.sqrt(1 - beta) * (1 - ap) / (1 - a) * x
        gap = max(gap, float((step.prev_sample - (mean + math.sqrt((1 - ap) / (1 - a) * beta) * z)).abs().max()))
    return gap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plot", default="ddim_convergence.png", help="where to save the figure")
    args = parser.parse_args()
    torch.set_num_threads(1)

    errors, slope = convergence()
    print("DDIM vs exact ODE solution, Gaussian data N(0.5, 0.3^2), trailing grid landing on its own points")
    for n, e in zip(STEPS, errors, strict=True):
        print(f"  N={n:5d}  max |x0 - exact| = {e:.3e}")
    print(f"  log-log slope = {slope:.3f} (first order: -1)")

    scheduler = grid_scheduler()
    mixture = GaussianMixtureModel(
        scheduler.alphas_cumprod, torch.tensor([[1.0, 0.0, -0.5], [-1.0, 0.5, 0.5]]), [0.2, 0.3]
    )
    x0 = mixture.sample_data(256, torch.Generator().manual_seed(0))
    curves = {
        "mixture": reconstruction(mixture, scheduler, x0),
        "mixture, 5 fixed-point iterations": reconstruction(mixture, scheduler, x0, iterations=5),
    }
    digits_errors = digits_reconstruction()
    if digits_errors is not None:
        curves["digits model"] = digits_errors
    print("invert-then-sample reconstruction MSE (same grid both ways)")
    print("  N      " + "  ".join(f"{name:>34s}" for name in curves))
    for i, n in enumerate(RECONSTRUCTION_STEPS):
        print(f"  {n:5d}  " + "  ".join(f"{curve[i]:34.3e}" for curve in curves.values()))
    print(f"eta = 1 step vs DDPM posterior sample: max gap {ddpm_gap():.2e}")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.loglog(STEPS, errors, "o-", label=f"DDIM (slope {slope:.2f})")
    left.loglog(STEPS, [errors[0] * STEPS[0] / n for n in STEPS], "k--", label="1 / N")
    left.set(xlabel="steps N", ylabel="max error in x0", title="Convergence to the exact ODE solution")
    left.legend()
    for name, curve in curves.items():
        right.loglog(RECONSTRUCTION_STEPS, curve, "o-", label=name)
    right.set(xlabel="steps N", ylabel="reconstruction MSE", title="Invert then sample")
    right.legend()
    figure.tight_layout()
    figure.savefig(args.plot, dpi=120)
    print(f"plot saved to {args.plot}")


if __name__ == "__main__":
    main()
