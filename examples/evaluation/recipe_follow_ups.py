"""Three follow-ups to ``ddim eval --recipe``, with its cells, seeds (0-4) and 50 samples per digit per seed.

- ``rescale_1``: guidance rescale phi = 1 at s = 5 and 8 (does a full rescale halve over-exposure?);
- ``linspace``: the ``linspace`` spacing (starts at 999 like trailing, ends at 0 like leading) at S = 10 and 25,
  on both models (is trailing's loss its start or its end?);
- ``margins``: over-exposure at s = 5 and 8, phi = 0 and 0.7, counted at several margins beyond [-1, 1]
  (margin 0 is the literal "outside [-1, 1]"; the evaluation counts |x| > 1 + 1/8).

Run from the repository root (about 4, 6 and 15 minutes on one CPU thread)::

    OMP_NUM_THREADS=1 python examples/evaluation/recipe_follow_ups.py rescale_1 docs/eval/recipe/rescale_1.json
    OMP_NUM_THREADS=1 python examples/evaluation/recipe_follow_ups.py linspace docs/eval/recipe/linspace.json
    OMP_NUM_THREADS=1 python examples/evaluation/recipe_follow_ups.py margins docs/eval/recipe/margins.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ddim import DDIMScheduler
from ddim.app.digits import DigitsUNet, load_model, load_pretrained
from ddim.app.digits.sample_metrics import DigitsJudge, overexposed_fraction
from ddim.app.recipe_evaluation import RecipeCell, run_recipe_cell, sample_cell

CONTROL = Path("examples/evaluation/models/digits_unet_control.safetensors")
SEEDS = range(5)
MARGINS = (0.0, 1 / 16, 1 / 8, 1 / 4)


def cells(name: str) -> list[RecipeCell]:
    if name == "rescale_1":
        return [RecipeCell("zero_snr", scale, 1.0, per_digit=50) for scale in (5.0, 8.0)]
    return [
        RecipeCell(model, spacing="linspace", steps=steps, per_digit=50)
        for model in ("control", "zero_snr")
        for steps in (10, 25)
    ]


def margins(models: dict[str, tuple[DigitsUNet, DDIMScheduler]]) -> list[dict[str, Any]]:
    """Per cell and margin, the over-exposed fraction per seed (the same samples measured at every margin)."""
    model, scheduler = models["zero_snr"]
    rows: list[dict[str, Any]] = []
    for scale in (5.0, 8.0):
        for rescale in (0.0, 0.7):
            cell = RecipeCell("zero_snr", scale, rescale, per_digit=50)
            per_seed: dict[float, list[float]] = {margin: [] for margin in MARGINS}
            for seed in SEEDS:
                samples, _ = sample_cell(model, scheduler, cell, seed)
                for margin in MARGINS:
                    per_seed[margin].append(overexposed_fraction(samples, margin))
            rows.append({"cell": asdict(cell), "margins": {str(m): v for m, v in per_seed.items()}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("follow_up", choices=("rescale_1", "linspace", "margins"))
    parser.add_argument("output", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = {"zero_snr": load_pretrained(conditional=True), "control": load_model(CONTROL)}
    if args.follow_up == "margins":
        report = margins(models)
    else:
        judge = DigitsJudge()
        report = [run_recipe_cell(models, cell, SEEDS, judge).as_dict() for cell in cells(args.follow_up)]
    args.output.write_text(json.dumps({"cells": report}, indent=1, default=float) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
