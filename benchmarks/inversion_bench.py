"""Inversion methods compared: reconstruction, cost, how Gaussian the latents are, and generation quality.

For each method of ``ddim.invert`` (DDIM, DDIM with 3 fixed-point iterations, EDICT with p = 0.93,
BDIA with gamma = 1) and N = 10, 20, 50 steps, on the embedded digits model (the 297 held-out digits,
float32) and on an exact Gaussian-mixture model (256 points in 3-d, float64):

1. invert, then sample back on the same grid (``ddim.sample`` for DDIM, ``ddim.sample_exact`` for
   EDICT / BDIA): max and RMS reconstruction error, model calls and wall time of each half;
2. the latent x_T (EDICT: its x chain; BDIA: the state at t_0): mean, std, the Kolmogorov-Smirnov
   distance of its values (all pixels pooled) from N(0, 1), and the excess kurtosis; the same
   statistics of a fresh N(0, 1) draw of the same size are the reference;
3. generation from fresh noise at S = 50 with each sampler (plain DDIM, EDICT, BDIA gamma = 1 and 0.5):
   digits-FID (``ddim.app.digits.fid.DigitsFID``) of ``--fid-count`` samples per seed, 5 seeds, the
   noise drawn as ``ddim eval`` draws it (one generator per seed, batches of 500), so the DDIM row is
   ``ddim eval``'s S = 50, eta = 0 cell; the resampled-training-digits floor at the same count.

Run (about 10 minutes on one CPU thread; ``--quick`` is a smoke run of about a minute):

    OMP_NUM_THREADS=1 python benchmarks/inversion_bench.py [--quick] [--out results/inversion.json]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import ddim
from common import environment, print_table, write_json
from ddim.analytic import GaussianMixtureModel
from ddim.noise import randn_like_diffusers

METHODS: list[tuple[str, dict[str, Any]]] = [
    ("DDIM", {"method": "ddim"}),
    ("DDIM, 3 fixed-point iterations", {"method": "ddim", "fixed_point_iterations": 3}),
    ("EDICT, p = 0.93", {"method": "edict"}),
    ("BDIA, gamma = 1", {"method": "bdia"}),
]
GENERATORS: list[tuple[str, dict[str, Any]]] = [
    ("DDIM", {}),
    ("EDICT, p = 0.93", {"method": "edict"}),
    ("BDIA, gamma = 1", {"method": "bdia"}),
    ("BDIA, gamma = 0.5", {"method": "bdia", "gamma": 0.5}),
]
FID_STEPS = 50
BATCH = 500


class Counting:
    """Counts the calls of a model."""

    def __init__(self, model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        self.model, self.calls = model, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.model(x, t)


def gaussianity(z: torch.Tensor) -> dict[str, float]:
    """Mean, std, KS distance from N(0, 1) and excess kurtosis of all values of ``z`` pooled."""
    values = z.detach().double().flatten().cpu()
    count = values.numel()
    ordered = torch.sort(values).values
    cdf = torch.special.ndtr(ordered)
    ranks = torch.arange(1, count + 1, dtype=torch.float64)
    ks = max(float((ranks / count - cdf).max()), float((cdf - (ranks - 1) / count).max()))
    centred = values - values.mean()
    kurtosis = float((centred**4).mean() / (centred**2).mean() ** 2 - 3)
    return {"mean": float(values.mean()), "std": float(values.std()), "ks": ks, "kurtosis": kurtosis}


def round_trip(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    scheduler: ddim.DDIMScheduler,
    x0: torch.Tensor,
    n: int,
    options: dict[str, Any],
) -> dict[str, Any]:
    counting = Counting(model)
    start = time.perf_counter()
    latent = ddim.invert(counting, scheduler, x0, num_inference_steps=n, **options)
    inversion_seconds, inversion_calls = time.perf_counter() - start, counting.calls
    start = time.perf_counter()
    if isinstance(latent, torch.Tensor):
        back = ddim.sample(counting, scheduler, noise=latent, num_inference_steps=n, progress=False)
        z = latent
    else:
        back = ddim.sample_exact(counting, scheduler, latent)
        z = latent.x if isinstance(latent, ddim.EDICTLatent) else latent.x_T
    sampling_seconds = time.perf_counter() - start
    error = (back.double() - x0.double()).abs()
    return {
        "n": n,
        "max_error": float(error.max()),
        "rms_error": float(error.pow(2).mean().sqrt()),
        "calls": f"{inversion_calls} + {counting.calls - inversion_calls}",
        "seconds": f"{inversion_seconds:.2f} + {sampling_seconds:.2f}",
        **gaussianity(z),
    }


def reconstruction(name: str, model: Any, scheduler: ddim.DDIMScheduler, x0: torch.Tensor, steps: list[int]) -> list:
    rows: list[dict[str, Any]] = []
    for label, options in METHODS:
        for n in steps:
            rows.append({"model": name, "method": label, **round_trip(model, scheduler, x0, n, options)})
    reference = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rows.append({"model": name, "method": "reference: a N(0, I) draw", **gaussianity(reference)})
    columns = [
        ("method", "method", ""),
        ("n", "N", "d"),
        ("max_error", "max error", ".1e"),
        ("rms_error", "RMS error", ".1e"),
        ("calls", "model calls (invert + sample)", ""),
        ("seconds", "seconds (invert + sample)", ""),
        ("mean", "latent mean", "+.3f"),
        ("std", "latent std", ".3f"),
        ("ks", "KS vs N(0,1)", ".3f"),
        ("kurtosis", "excess kurtosis", "+.2f"),
    ]
    print(f"\n### {name}\n")
    print_table(rows, columns)
    return rows


def generation(model: Any, scheduler: ddim.DDIMScheduler, count: int, seeds: list[int]) -> list[dict[str, Any]]:
    from ddim.app.digits import SAMPLE_SHAPE
    from ddim.app.digits.fid import DigitsFID

    fid = DigitsFID()
    results: dict[str, dict[str, list[float]]] = {label: {"fids": [], "seconds": []} for label, _ in GENERATORS}
    for seed in seeds:
        generator = torch.Generator().manual_seed(seed)
        noises = [
            randn_like_diffusers((min(BATCH, count - i), *SAMPLE_SHAPE), generator) for i in range(0, count, BATCH)
        ]
        for label, options in GENERATORS:
            start = time.perf_counter()
            if options:
                batches = [
                    ddim.sample_exact(model, scheduler, x_t, num_inference_steps=FID_STEPS, **options) for x_t in noises
                ]
            else:
                batches = [
                    ddim.sample(model, scheduler, noise=x_t, num_inference_steps=FID_STEPS, progress=False)
                    for x_t in noises
                ]
            results[label]["seconds"].append(time.perf_counter() - start)
            results[label]["fids"].append(fid(torch.cat(batches)))
        print(f"seed {seed}: " + ", ".join(f"{k} {v['fids'][-1]:.2f}" for k, v in results.items()), flush=True)
    floor = [fid.floor_and_ceiling(count, seed)["resampled"] for seed in seeds]
    rows = []
    for label, _ in GENERATORS:
        fids = results[label]["fids"]
        rows.append(
            {
                "sampler": label,
                "fid": f"{np.mean(fids):.2f} +- {np.std(fids, ddof=1) if len(fids) > 1 else 0.0:.2f}",
                "fids": ", ".join(f"{v:.2f}" for v in fids),
                "seconds": float(np.mean(results[label]["seconds"])),
            }
        )
    spread = np.std(floor, ddof=1) if len(floor) > 1 else 0.0
    rows.append({"sampler": "floor: resampled training digits", "fid": f"{np.mean(floor):.2f} +- {spread:.2f}"})
    rows[-1]["fids"] = ", ".join(f"{v:.2f}" for v in floor)
    print(f"\n### digits-FID at S = {FID_STEPS}, {count} samples per seed, seeds {seeds}\n")
    print_table(
        rows,
        [
            ("sampler", "sampler", ""),
            ("fid", "digits-FID (mean +- std over seeds)", ""),
            ("fids", "per seed", ""),
            ("seconds", "seconds per seed", ".1f"),
        ],
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 digits, N = 10, 200 FID samples, 2 seeds")
    parser.add_argument("--fid-count", type=int, default=1000, help="samples per seed for digits-FID")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0 .. SEEDS-1 for digits-FID")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from ddim.app.digits import load_digits_split, load_pretrained

    steps = [10] if args.quick else [10, 20, 50]
    count, seeds = (200, [0, 1]) if args.quick else (args.fid_count, list(range(args.seeds)))
    started = time.perf_counter()
    model, scheduler = load_pretrained()
    held_out = load_digits_split().test_images[: 64 if args.quick else None]
    payload: dict[str, Any] = {"environment": environment(torch.device("cpu"))}
    config = {k: scheduler.config[k] for k in ("timestep_spacing", "set_alpha_to_one", "prediction_type")}
    print(f"digits model: {held_out.shape[0]} held-out digits, float32, scheduler {config}")
    payload["digits"] = reconstruction("digits model", model, scheduler, held_out, steps)

    grid = ddim.DDIMScheduler(clip_sample=False, timestep_spacing="trailing", prev_timestep_from_grid=True)
    means = torch.tensor([[1.0, 0.0, -0.5], [-1.0, 0.5, 0.5]])
    mixture = GaussianMixtureModel(grid.alphas_cumprod, means, [0.2, 0.3])
    points = mixture.sample_data(256, torch.Generator().manual_seed(0))
    payload["mixture"] = reconstruction("exact mixture model", mixture, grid, points, steps)

    payload["generation"] = generation(model, scheduler, count, seeds)
    minutes = (time.perf_counter() - started) / 60
    payload["minutes"] = minutes
    print(f"\ntotal: {minutes:.1f} minutes on {torch.get_num_threads()} thread(s)")
    if args.out:
        print(f"wrote {write_json(args.out, payload)}")


if __name__ == "__main__":
    main()
