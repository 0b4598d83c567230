"""Guided inversion on the conditional digits model: invert held-out digits under classifier-free guidance, sample
back with the same guidance, report the reconstruction error per method (DDIM, fixed-point, EDICT, BDIA).

    OMP_NUM_THREADS=1 python benchmarks/guided_inversion_digits.py [--count 64] [--scale 1.5] [--rescale 0.7]
"""

from __future__ import annotations

import argparse
import time

import torch

import ddim
from ddim.app.digits import load_digits_split, load_pretrained
from ddim.app.digits.conditional import guided_models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--scale", type=float, default=1.5)
    parser.add_argument("--rescale", type=float, default=0.7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, scheduler = load_pretrained(conditional=True)
    split = load_digits_split()
    x0, labels = split.test_images[: args.count], split.test_labels[: args.count]
    conditional, unconditional = guided_models(model, labels)
    guidance = {"guidance_scale": args.scale, "unconditional_model": unconditional, "guidance_rescale": args.rescale}
    print(f"{args.count} held-out digits, guidance scale {args.scale}, rescale {args.rescale}, float32")
    print("| method | N | max error | RMS error | seconds |")
    print("|---|---|---|---|---|")
    for n in (10, 50):
        # the trailing grid of the model's config, its first point 999 (abar = 0 under zero terminal SNR, where
        # EDICT and BDIA would divide by zero) moved to 998, for every method alike
        scheduler.set_timesteps(n)
        grid = [998, *scheduler.timesteps.tolist()[1:]]
        for method, extra in (("ddim", {}), ("ddim", {"fixed_point_iterations": 3}), ("edict", {}), ("bdia", {})):
            started = time.perf_counter()
            with torch.no_grad():
                latent = ddim.invert(conditional, scheduler, x0, timesteps=grid, method=method, **extra, **guidance)
                if method == "ddim":
                    back = ddim.sample(conditional, scheduler, noise=latent, timesteps=grid, progress=False, **guidance)
                else:
                    back = ddim.sample_exact(conditional, scheduler, latent, **guidance)
            error = (back - x0).abs()
            name = method + (" + 3 fixed-point" if extra else "")
            seconds = time.perf_counter() - started
            rms = float(error.square().mean().sqrt())
            print(f"| {name} | {n} | {float(error.max()):.2e} | {rms:.2e} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
