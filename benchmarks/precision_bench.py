"""Precision: 50-step trajectories in fp16 / bf16 against a float64 reference, ours and diffusers'.

The model is exact for Gaussian data x0 ~ N(mu, s^2) (per element): E[x0 | x_t] = mu + sqrt(a) s^2
(x_t - sqrt(a) mu) / (a s^2 + 1 - a), from which the epsilon / v predictions follow. It computes in
float64 and returns the sampler's dtype, as a half-precision network would. Every trajectory starts
from the same x_T and (eta > 0) adds the same noise, both rounded to the low precision first, so the
reference sees the same inputs. Two errors are reported: of the final sample (which includes the
unavoidable rounding of the state and of the model output to the low precision at every step; "floor"
is that part alone), and of each step against the float64 step from the same inputs (the scheduler's
own arithmetic), as an RMS over the trajectory.

    python benchmarks/precision_bench.py [--quick] [--out results/precision.json]
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import torch

import ddim
from common import CONFIGS, DTYPES, environment, print_table, write_json

MU, SIGMA = 0.3, 0.5
CASES: dict[str, dict[str, Any]] = {
    "default (eps, clip)": CONFIGS["default"],
    "sd (eps)": CONFIGS["sd"],
    "v, zero-snr, trailing": {
        "prediction_type": "v_prediction",
        "rescale_betas_zero_snr": True,
        "timestep_spacing": "trailing",
        "clip_sample": False,
    },
}


class GaussianOracle:
    """Exact prediction (epsilon, sample or v) for Gaussian data, computed in float64."""

    def __init__(self, alphas_cumprod: torch.Tensor, prediction_type: str) -> None:
        self.alphas = alphas_cumprod.double()
        self.prediction_type = prediction_type

    def __call__(self, x: torch.Tensor, t: int) -> torch.Tensor:
        a = float(self.alphas[t])
        sa, sb = math.sqrt(a), math.sqrt(1 - a)
        xt = x.double()
        x0 = MU + sa * SIGMA**2 * (xt - sa * MU) / (a * SIGMA**2 + 1 - a)
        eps = (xt - sa * x0) / sb
        out = {"epsilon": eps, "sample": x0, "v_prediction": sa * eps - sb * x0}[self.prediction_type]
        return out.to(x.dtype)


def trajectory(
    scheduler: Any, x_t: torch.Tensor, noises: list[torch.Tensor] | None, eta: float, steps: int, exact: Any = None
) -> tuple[torch.Tensor, float]:
    """(x_0 after ``steps`` steps in ``x_t``'s dtype, RMS over the steps of the local relative error).

    The local error of a step compares its output with the float64 step (``exact``, our scheduler in
    float64) applied to the same low-precision inputs: it isolates the scheduler's own arithmetic.
    With ``exact`` set to the string "floor", each step is computed exactly and only its result is
    rounded to the low precision: the unavoidable error of storing the state in that dtype.
    """
    scheduler.set_timesteps(steps)
    model = GaussianOracle(scheduler.alphas_cumprod, scheduler.config.prediction_type)
    x = x_t
    local: list[float] = []
    for i, t in enumerate(scheduler.timesteps):
        noise = noises[i].to(x.dtype) if noises is not None else None
        m = model(x, int(t))
        if exact == "floor":
            x = scheduler.step(m.double(), int(t), x.double(), eta=eta, variance_noise=noise).prev_sample.to(x.dtype)
            continue
        prev = scheduler.step(m, int(t), x, eta=eta, variance_noise=noise).prev_sample
        if exact is not None:
            wide = noise.double() if noise is not None else None
            target = exact.step(m.double(), int(t), x.double(), eta=eta, variance_noise=wide).prev_sample
            local.append(relative_error(prev, target) ** 2)
        x = prev
    return x, math.sqrt(sum(local) / len(local)) if local else 0.0


def relative_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    return float((x.double() - reference).norm() / reference.norm())


def measure(shape: tuple[int, ...], steps: int, seed: int = 0) -> list[dict[str, Any]]:
    from diffusers import DDIMScheduler as DiffusersDDIM

    rows = []
    for case, config in CASES.items():
        exact = ddim.DDIMScheduler(**config)
        exact.set_timesteps(steps)
        for eta in (0.0, 1.0):
            for dtype_name in ("fp16", "bf16"):
                dtype = DTYPES[dtype_name]
                g = torch.Generator().manual_seed(seed)
                x_t = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
                noises = (
                    [torch.randn(shape, generator=g, dtype=torch.float64).to(dtype) for _ in range(steps)]
                    if eta > 0
                    else None
                )
                reference, _ = trajectory(ddim.DDIMScheduler(**config), x_t.double(), noises, eta, steps)
                floor, _ = trajectory(ddim.DDIMScheduler(**config), x_t, noises, eta, steps, "floor")
                ours, local_ours = trajectory(ddim.DDIMScheduler(**config), x_t, noises, eta, steps, exact)
                theirs, local_theirs = trajectory(DiffusersDDIM(**config), x_t, noises, eta, steps, exact)
                e_ours, e_theirs = relative_error(ours, reference), relative_error(theirs, reference)
                rows.append(
                    {
                        "config": case,
                        "eta": eta,
                        "dtype": dtype_name,
                        "floor": relative_error(floor, reference),
                        "ours": e_ours,
                        "diffusers": e_theirs,
                        "ratio": e_ours / e_theirs if e_theirs > 0 else float("nan"),
                        "step_ours": local_ours,
                        "step_diffusers": local_theirs,
                        "step_ratio": local_ours / local_theirs if local_theirs > 0 else float("nan"),
                    }
                )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller tensors")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", default="results/precision.json")
    args = parser.parse_args(argv)
    shape = (2, 3, 16, 16) if args.quick else (8, 3, 32, 32)
    rows = measure(shape, args.steps)
    print(
        f"relative L2 error after {args.steps} steps, shape {shape}. x_0: final sample vs the float64 trajectory "
        "(floor: exact steps, only the stored state rounded); step: RMS over the trajectory of each step's error "
        "vs the float64 step from the same inputs"
    )
    print_table(
        rows,
        [
            ("config", "config", "s"),
            ("eta", "eta", ".0f"),
            ("dtype", "dtype", "s"),
            ("floor", "x_0: floor", ".2e"),
            ("ours", "x_0: ours", ".2e"),
            ("diffusers", "x_0: diffusers", ".2e"),
            ("ratio", "x_0: ours / diffusers", ".2f"),
            ("step_ours", "step: ours", ".2e"),
            ("step_diffusers", "step: diffusers", ".2e"),
            ("step_ratio", "step: ours / diffusers", ".2f"),
        ],
    )
    path = write_json(
        args.out, {"environment": environment(torch.device("cpu")), "shape": shape, "steps": args.steps, "rows": rows}
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
