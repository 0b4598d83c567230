"""Two follow-ups to ``ddim eval --recipe``, with its cells, seeds (0-4) and 50 samples per digit per seed.

- ``rescale_1``: guidance rescale phi = 1 at s = 5 and 8 (does a full rescale halve over-exposure?);
- ``linspace``: the ``linspace`` spacing (starts at 999 like trailing, ends at 0 like leading) at S = 10 and 25,
  on both models (is trailing's loss its start or its end?).

Run from the repository root (about 4 and 6 minutes on one CPU thread)::

    OMP_NUM_THREADS=1 python docs/eval/recipe/follow_ups.py rescale_1 docs/eval/recipe/rescale_1.json
    OMP_NUM_THREADS=1 python docs/eval/recipe/follow_ups.py linspace docs/eval/recipe/linspace.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ddim.app.digits import load_model, load_pretrained
from ddim.app.digits.sample_metrics import DigitsJudge
from ddim.app.recipe_evaluation import RecipeCell, run_recipe_cell

CONTROL = Path("docs/eval/control/digits_unet_control.safetensors")
SEEDS = range(5)


def cells(name: str) -> list[RecipeCell]:
    if name == "rescale_1":
        return [RecipeCell("zero_snr", scale, 1.0, per_digit=50) for scale in (5.0, 8.0)]
    return [
        RecipeCell(model, spacing="linspace", steps=steps, per_digit=50)
        for model in ("control", "zero_snr")
        for steps in (10, 25)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("follow_up", choices=("rescale_1", "linspace"))
    parser.add_argument("output", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = {"zero_snr": load_pretrained(conditional=True), "control": load_model(CONTROL)}
    judge = DigitsJudge()
    report = [run_recipe_cell(models, cell, SEEDS, judge).as_dict() for cell in cells(args.follow_up)]
    args.output.write_text(json.dumps({"cells": report}, indent=1, default=float) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
