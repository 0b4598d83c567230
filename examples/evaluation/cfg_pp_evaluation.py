"""CFG++ against classifier-free guidance on the conditional digits model: the trade-off and invertibility.

Two parts, 5 seeds each, on the shipped zero-SNR v-prediction model (trailing grid, S = 50, eta 0):

- ``sweep``: CFG++ (arXiv 2406.08070) at each lambda, 50 samples of each digit per seed, measured with the
  recipe evaluation's tooling (class accuracy, per-class digits-FID; ``ddim.app.recipe_evaluation.measure``),
  from the same x_T per seed as the CFG cells of ``docs/eval/recipe/recipe_sweep.json`` (s = 1.5, 3, 5,
  phi = 0), which are read from that file;
- ``inversion``: plain DDIM inversion (``ddim.invert``, S = 50) of 50 held-out digits per seed (5 of each
  digit) under CFG at s and CFG++ at lambda, sampled back with the same guidance; the round-trip error is
  the RMS pixel error against the inverted digits.

    OMP_NUM_THREADS=1 python examples/evaluation/cfg_pp_evaluation.py --out docs/eval/cfg_pp
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import ddim
from ddim.app.digits import load_digits_split, load_pretrained, sample_digits
from ddim.app.digits.conditional import NUM_DIGITS, guided_models
from ddim.app.digits.sample_metrics import DigitsJudge
from ddim.app.recipe_evaluation import balanced_digits, measure

SEEDS = (0, 1, 2, 3, 4)
LAMBDAS = (0.2, 0.4, 0.6, 0.8, 1.0)
CFG_SCALES = (1.5, 3.0, 5.0)
INVERSION_PER_DIGIT = 5
STEPS = 50


def sweep(lambdas: list[float], per_digit: int, seeds: list[int]) -> list[dict[str, Any]]:
    model, scheduler = load_pretrained(conditional=True)
    judge = DigitsJudge()
    digits = balanced_digits(per_digit)
    cells = []
    for lam in lambdas:
        values: dict[str, list[float]] = {}
        seconds = []
        for seed in seeds:
            start = time.perf_counter()
            samples = sample_digits(
                model,
                scheduler,
                digits,
                steps=STEPS,
                guidance="cfg++",
                guidance_scale=lam,
                guidance_rescale=0.0,
                generator=torch.Generator().manual_seed(seed),
            )
            seconds.append(time.perf_counter() - start)
            for name, value in measure(judge, samples, digits).items():
                values.setdefault(name, []).append(value)
        cells.append({"guidance": "cfg++", "scale": lam, "per_seed": values, "seconds": seconds})
        print(
            f"cfg++ lambda {lam:g}: accuracy {np.mean(values['accuracy']):.4f}, "
            f"per-class FID {np.mean(values['per_class_fid']):.1f}",
            flush=True,
        )
    return cells


def held_out(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """10 held-out digits of each class, drawn without replacement by ``seed``."""
    split = load_digits_split()
    generator = torch.Generator().manual_seed(seed)
    picks = []
    for digit in range(NUM_DIGITS):
        index = torch.nonzero(split.test_labels == digit).flatten()
        picks.append(index[torch.randperm(len(index), generator=generator)[:INVERSION_PER_DIGIT]])
    chosen = torch.cat(picks)
    return split.test_images[chosen], split.test_labels[chosen]


def round_trip_error(kind: str, scale: float, seeds: list[int]) -> list[float]:
    """RMS pixel error of invert-then-sample under one guidance, per seed."""
    model, scheduler = load_pretrained(conditional=True)
    errors = []
    for seed in seeds:
        images, labels = held_out(seed)
        conditional, unconditional = guided_models(model, labels)
        guided: ddim.Model
        if kind == "cfg++":
            guided = ddim.CFGPlusPlus(conditional, unconditional, scale)
        else:
            guided = ddim.ClassifierFreeGuidance(conditional, unconditional, scale)
        with torch.no_grad():
            x_T = ddim.invert(guided, scheduler, images, num_inference_steps=STEPS)
            back = ddim.sample(guided, scheduler, noise=x_T, num_inference_steps=STEPS)
        errors.append(float((back - images).pow(2).mean().sqrt()))
    print(f"{kind} {scale:g}: round-trip RMS error {np.mean(errors):.4f}", flush=True)
    return errors


def summary(values: list[float]) -> str:
    spread = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.4g} ± {spread:.2g}"


def report(out: Path) -> str:
    """Markdown tables from the part files in ``out`` and the recipe's CFG cells."""
    lines = ["# CFG++ against CFG on the conditional digits model", ""]
    sweep_file, inversion_file = out / "cfg_pp_sweep.json", out / "cfg_pp_inversion.json"
    if sweep_file.exists():
        recipe = json.loads(Path("docs/eval/recipe/recipe_sweep.json").read_text())
        cfg = [
            {"guidance": "cfg", "scale": c["guidance_scale"], "per_seed": c["per_seed"]}
            for c in recipe["cells"]
            if c["guidance_rescale"] == 0.0 and c["guidance_scale"] in CFG_SCALES
        ]
        cells = cfg + json.loads(sweep_file.read_text())["cells"]
        lines += ["| guidance | scale | accuracy | per-class FID | over-exposed |", "|---|---|---|---|---|"]
        for c in cells:
            v = c["per_seed"]
            lines.append(
                f"| {c['guidance']} | {c['scale']:g} | {summary([100 * a for a in v['accuracy']])} % | "
                f"{summary(v['per_class_fid'])} | {summary([100 * o for o in v['overexposed']])} % |"
            )
        lines.append("")
    if inversion_file.exists():
        rows = json.loads(inversion_file.read_text())["cells"]
        lines += ["| guidance | scale | round-trip RMS error |", "|---|---|---|"]
        lines += [f"| {c['guidance']} | {c['scale']:g} | {summary(c['per_seed'])} |" for c in rows]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/eval/cfg_pp"))
    parser.add_argument("--parts", nargs="+", default=["sweep", "inversion"], choices=["sweep", "inversion", "report"])
    parser.add_argument("--lambdas", type=float, nargs="+", default=list(LAMBDAS))
    parser.add_argument("--seeds", type=int, default=len(SEEDS))
    parser.add_argument(
        "--inversions",
        nargs="+",
        default=["cfg:1.5", "cfg++:0.2", "cfg:3", "cfg++:0.6"],
        help="guidance:scale settings of the inversion part (CFG at s and CFG++ at a lambda of equal accuracy)",
    )
    parser.add_argument("--per-digit", type=int, default=50)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = list(range(args.seeds))
    if "sweep" in args.parts:
        cells = sweep(args.lambdas, args.per_digit, seeds)
        text = json.dumps({"seeds": seeds, "per_digit": args.per_digit, "cells": cells}, indent=1)
        (args.out / "cfg_pp_sweep.json").write_text(text + "\n")
    if "inversion" in args.parts:
        cells = []
        for setting in args.inversions:
            kind, scale = setting.split(":")
            cells.append(
                {"guidance": kind, "scale": float(scale), "per_seed": round_trip_error(kind, float(scale), seeds)}
            )
            text = json.dumps({"seeds": seeds, "per_digit": INVERSION_PER_DIGIT, "cells": cells}, indent=1)
            (args.out / "cfg_pp_inversion.json").write_text(text + "\n")  # after each setting
    (args.out / "cfg_pp.md").write_text(report(args.out) + "\n")
    print((args.out / "cfg_pp.md").read_text())


if __name__ == "__main__":
    main()
