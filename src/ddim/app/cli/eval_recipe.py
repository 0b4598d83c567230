"""``ddim eval --recipe``: the zero-terminal-SNR recipe measured on the conditional digits models.

Parts (``--parts``, default all): the guidance sweep, the recipe ablation (control model against the
zero-SNR model, leading against trailing), brightness, and DDIM against DDPM. Each part writes
``recipe_PART.json`` to the output folder; ``recipe.md``, ``recipe_tradeoff.png`` and
``recipe_brightness.png`` are then rebuilt from every part file in the folder, so parts may be run apart.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ddim.app import evaluation_framework, recipe_report, timing
from ddim.app import recipe_evaluation as recipe
from ddim.app.cli import arguments, devices, loading, outputs, usage
from ddim.app.digits.conditional import NUM_DIGITS
from ddim.app.digits.sample_metrics import DigitsJudge, mean_brightness
from ddim.scheduler import DDIMScheduler

#: Digits per seed of each digit: the sweep, ablation and brightness cells, and DDIM against DDPM (N = 2000).
DEFAULT_PER_DIGIT = 50
DEFAULT_DDPM_PER_DIGIT = 200
#: Options of the Table 1 evaluation that the recipe evaluation does not take.
TABLE1_ONLY = ("counts", "etas", "ddpm_count", "clip_sample", "use_clipped_model_output")
#: Options (their ``argparse`` names) that only the recipe evaluation takes.
RECIPE_ONLY = ("parts", "per_digit", "control_model", "inverted_models", "report_only")

Models = dict[str, tuple[Any, DDIMScheduler]]


def add_recipe_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("the zero-terminal-SNR recipe on the conditional models (--recipe)")
    group.add_argument(
        "--recipe",
        action="store_true",
        help="evaluate the recipe instead of Table 1: writes recipe_PART.json, recipe.md and plots",
    )
    group.add_argument("--parts", nargs="+", choices=recipe_report.PART_NAMES, default=None, help="default: all four")
    group.add_argument(
        "--per-digit",
        type=lambda text: arguments.parse_int_in(text, 2, 10_000),
        default=None,
        help=f"samples of each digit per seed and cell (default: {DEFAULT_PER_DIGIT}; DDIM against DDPM: "
        f"{DEFAULT_DDPM_PER_DIGIT})",
    )
    group.add_argument(
        "--control-model",
        type=Path,
        default=None,
        help="the control model (no zero-SNR rescale; needed by the ablation, used by brightness)",
    )
    group.add_argument(
        "--inverted-models",
        type=Path,
        nargs=2,
        default=None,
        metavar=("ZERO_SNR", "CONTROL"),
        help="both models trained on randomly inverted digits (brightness: the controlled variant)",
    )
    group.add_argument(
        "--report-only", action="store_true", help="only rebuild recipe.md and the plots from the part files"
    )


def load_conditional(path: Path | None, device: str) -> tuple[Any, DDIMScheduler, str]:
    loaded = loading.load_model(path, device, conditional=True)
    return loaded.model, loaded.scheduler, loaded.description


def check_recipe_args(args: argparse.Namespace, parts: list[str]) -> None:
    for name in TABLE1_ONLY:
        if getattr(args, name) not in (None, False):
            raise usage.UsageError(f"--{name.replace('_', '-')} is an option of Table 1; --recipe does not take it")
    if "ablation" in parts and args.control_model is None:
        raise usage.UsageError("--parts ablation needs --control-model (the model without the zero-SNR rescale)")
    for path in [args.control_model, *(args.inverted_models or [])]:
        if path is not None and not path.is_file():
            raise usage.UsageError(f"model {str(path)!r} is not a file")


def part_cells(part: str, args: argparse.Namespace, models: Models) -> list[recipe.RecipeCell]:
    per_digit = args.per_digit
    if part == "sweep":
        return recipe.sweep_cells(
            per_digit or DEFAULT_PER_DIGIT, (0.0, 1.5, 5.0) if args.quick else recipe.SWEEP_SCALES
        )
    if part == "ablation":
        return recipe.ablation_cells(per_digit or DEFAULT_PER_DIGIT, (10,) if args.quick else recipe.ABLATION_STEPS)
    if part == "brightness":
        return [recipe.RecipeCell(name, per_digit=per_digit or DEFAULT_PER_DIGIT) for name in models]
    return recipe.ddpm_cells(per_digit or DEFAULT_DDPM_PER_DIGIT)


def brightness_reference(name: str, judge: DigitsJudge) -> torch.Tensor:
    """Per-image brightness of the data a model was trained on (its negatives too, for the inverted models)."""
    images = judge.data.train_images
    return mean_brightness(torch.cat([images, -images]) if name.startswith("inverted") else images)


def run_part(
    part: str,
    args: argparse.Namespace,
    models: Models,
    judge: DigitsJudge,
    seeds: list[int],
    on_seed: Callable[[], None],
) -> dict[str, Any]:
    """Every cell of one part, its floors, and (brightness) the data's brightness and each cell's distance to it."""
    with timing.timed() as elapsed:
        cells = part_cells(part, args, models)
        data = {name: brightness_reference(name, judge) for name in models}
        references = {name: recipe.brightness_summary(values) for name, values in data.items()}
        results = []
        for cell in cells:
            result = recipe.run_recipe_cell(
                models, cell, seeds, judge, on_seed, keep_brightness=part != "ddpm", batch_size=args.batch_size
            )
            entry = result.as_dict()
            if result.brightness:
                entry["brightness_w1"] = recipe.wasserstein(result.brightness, data[cell.model])
                entry["brightness_extreme"] = recipe.extreme_fraction(result.brightness, references[cell.model])
            results.append(entry)
        per_digit = cells[0].per_digit
        draws = per_digit * NUM_DIGITS * len(seeds)
        resampled_w1 = {
            name: [recipe.resampled_wasserstein(data[name], draws, seed) for seed in seeds] for name in data
        }
        per_class_floor = [judge.per_class_floor(per_digit, seed) for seed in seeds]
        fid_floor = [judge.fid.floor_and_ceiling(per_digit * 10, seed) for seed in seeds]
    return {
        "part": part,
        "seeds": seeds,
        "per_digit": per_digit,
        "cells": results,
        "per_class_floor": per_class_floor,
        "fid_floor": fid_floor,
        "brightness_data": references,
        "brightness_w1_resampled": resampled_w1,
        "seconds_total": elapsed[0],
    }


def run_recipe(args: argparse.Namespace, seeds: list[int], default_out_dir: Path) -> int:
    """``ddim eval --recipe``: run the chosen parts, write each one's JSON as it ends, rebuild the report."""
    devices.check_device(args.device)
    parts = [] if args.report_only else list(dict.fromkeys(args.parts or recipe_report.PART_NAMES))
    check_recipe_args(args, parts)
    out_dir = outputs.output_folder(args.out_dir, default_out_dir, "recipe.md")
    if parts:
        out_dir.mkdir(exist_ok=True)
        run_parts(args, parts, seeds, out_dir)
    try:
        found = recipe_report.read_parts(out_dir)
    except ValueError as error:
        raise usage.UsageError(str(error)) from None
    if not found:
        raise usage.UsageError(f"--out-dir {str(out_dir)!r} holds no recipe_PART.json to report on")
    outputs.write_together(out_dir, lambda staging: recipe_report.write_report(staging, found))
    print((out_dir / "recipe.md").read_text(encoding="utf-8"))
    return 0


def run_parts(args: argparse.Namespace, parts: list[str], seeds: list[int], out_dir: Path) -> None:
    """Run each part with its models and write ``recipe_PART.json`` as soon as it ends."""
    models, descriptions = load_models(args)
    judge = DigitsJudge()
    for part in parts:
        needed = {"ablation": {"zero_snr", "control"}, "brightness": set(models)}.get(part, {"zero_snr"})
        chosen = {name: models[name] for name in models if name in needed}
        runs = len(part_cells(part, args, chosen)) * len(seeds)
        bar = evaluation_framework.seed_run_progress(runs, f"ddim eval --recipe {part}", args.progress)
        try:
            report = run_part(part, args, chosen, judge, seeds, bar.update)
        finally:
            bar.close()
        report["models"] = {name: descriptions[name] for name in chosen}
        write_json(out_dir / recipe_report.PART_FILE.format(part), report)


def write_json(path: Path, report: dict[str, Any]) -> None:
    """``report`` as indented JSON at ``path``, atomically."""
    text = evaluation_framework.report_json(report)
    outputs.write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def load_models(args: argparse.Namespace) -> tuple[Models, dict[str, str]]:
    """The zero-SNR model (--model or the embedded one) and the optional control and inverted models."""
    model, scheduler, description = load_conditional(args.model, args.device)
    models: Models = {"zero_snr": (model, scheduler)}
    descriptions = {"zero_snr": description}
    extra = [("control", args.control_model)]
    if args.inverted_models:
        extra += [("inverted", args.inverted_models[0]), ("inverted_control", args.inverted_models[1])]
    for name, path in extra:
        if path is not None:
            loaded_model, loaded_scheduler, descriptions[name] = load_conditional(path, args.device)
            models[name] = (loaded_model, loaded_scheduler)
    return models, descriptions
