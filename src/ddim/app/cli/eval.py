"""``ddim eval``: reproduce the paper's Table 1 (digits-FID against steps and eta) on the embedded model

digits-FID for S in {10,20,50,100,1000} x eta in {0,0.2,0.5,1} (+ DDPM = eta 1 at S 1000); writes table1.json,
table1.md and table1.png to --out-dir and prints the table. With --recipe, the zero-terminal-SNR recipe on the
conditional models instead (guidance sweep, ablation, brightness, DDIM against DDPM; recipe.md and plots).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from ddim.app import evaluation, evaluation_framework, timing
from ddim.app.cli import arguments, devices, eval_recipe, eval_shards, loading, outputs, usage
from ddim.app.digits.data import SAMPLE_SHAPE
from ddim.app.digits.fid import DigitsFID
from ddim.app.seeding import SEED_LIMIT
from ddim.model import Model
from ddim.scheduler import DDIMScheduler

#: Largest samples-per-seed count of a column (all N samples of a seed are held in memory for the metric).
MAX_COUNT = 100_000
#: Most seeds per cell (each seed re-runs every cell; the paper's tables use a handful).
MAX_SEEDS = 1000
#: The output folder when --out-dir is not given: the only one ``ddim eval`` creates.
DEFAULT_OUT_DIR = "eval"


class FiniteFID(DigitsFID):
    """:class:`DigitsFID` that refuses non-finite samples (``NonFiniteOutputError``) instead of scoring them."""

    def __call__(self, samples: torch.Tensor) -> float:
        return super().__call__(outputs.check_finite(samples))


def step_count(text: str) -> tuple[int, int]:
    """argparse type for ``S:N``: S sampling steps (1..1000) with N samples per seed (2..MAX_COUNT)."""
    try:
        steps, count = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not S:N (two integers, e.g. 50:1000)") from None
    if not 1 <= steps <= 1000:
        raise argparse.ArgumentTypeError(f"{text!r}: S must be in 1..1000")
    return steps, sample_count(str(count))


def sample_count(text: str) -> int:
    """argparse type for a samples-per-seed count N (2..MAX_COUNT)."""
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 2 <= count <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"{text!r}: N must be in 2..{MAX_COUNT}")
    return count


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = arguments.add_command(subparsers, __doc__, run)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="reduced grid (S 10,20,50 at N=300; eta 0,1; 2 seeds), about 40 s on one free CPU thread; a smoke run "
        "that cannot judge the targets",
    )
    parser.add_argument(
        "--counts",
        type=step_count,
        nargs="+",
        default=None,
        metavar="S:N",
        help="steps S and samples per seed N of each column (default: "
        + " ".join(f"{s}:{n}" for s, n in evaluation.TABLE1_COUNTS.items())
        + ")",
    )
    parser.add_argument(
        "--etas", type=arguments.non_negative_float, nargs="+", default=None, help="eta values (default: Table 1)"
    )
    parser.add_argument(
        "--ddpm-count",
        type=sample_count,
        default=None,
        metavar="N",
        help="samples per seed of the DDIM (S=50, eta=0) vs DDPM comparison, run at that N besides the grid "
        f"(default: {evaluation.DDPM_COUNT} for the full grid; none with --quick or --counts)",
    )
    parser.add_argument(
        "--seeds",
        type=lambda text: arguments.parse_int_in(text, 1, MAX_SEEDS),
        default=5,
        help=f"seeds per cell, 1..{MAX_SEEDS} (default: 5)",
    )
    parser.add_argument(
        "--first-seed",
        type=arguments.seed_int,
        default=0,
        help="the seeds are FIRST_SEED, FIRST_SEED+1, ... (default: 0); adds seeds to an earlier run's cells",
    )
    parser.add_argument(
        "--batch-size",
        type=arguments.positive_int,
        default=evaluation.EVAL_BATCH_SIZE,
        help=f"samples per model call; the samples depend on it (default: {evaluation.EVAL_BATCH_SIZE})",
    )
    parser.add_argument(
        "--clip-sample",
        action="store_true",
        help="sample with diffusers' default clip_sample=True (x_0 clipped, eps not): shows the trap described in "
        "docs/evaluation.md, 'The clip_sample trap'",
    )
    parser.add_argument(
        "--use-clipped-model-output",
        action="store_true",
        help="with --clip-sample: recompute eps from the clipped x_0 (diffusers' fix for the trap)",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help=f"an existing output folder (default: ./{DEFAULT_OUT_DIR}, created when missing)",
    )
    parser.add_argument(
        "--from-shards",
        type=Path,
        default=None,
        metavar="DIR",
        help="instead: digits-FID (overall and per digit) of a `ddim sample --out-dir DIR --fid-stats` run, from its "
        "shards' feature statistics (no sample is loaded)",
    )
    arguments.add_model_options(parser)
    eval_recipe.add_recipe_options(parser)


def run(args: argparse.Namespace) -> int:
    if args.from_shards is not None:
        return eval_shards.run_from_shards(args)
    seed_count = evaluation_framework.QUICK_SEEDS if args.quick else args.seeds
    if args.first_seed + seed_count > SEED_LIMIT:
        raise usage.UsageError(f"--first-seed {args.first_seed} + --seeds {seed_count} must be at most 2**32")
    seeds = evaluation_framework.seed_list(args.first_seed, seed_count)
    if args.recipe:
        return eval_recipe.run_recipe(args, seeds, Path(DEFAULT_OUT_DIR))
    for flag in eval_recipe.RECIPE_ONLY:
        if getattr(args, flag) not in (None, False):
            raise usage.UsageError(f"--{flag.replace('_', '-')} needs --recipe")
    devices.check_device(args.device)
    out_dir = outputs.output_folder(args.out_dir, Path(DEFAULT_OUT_DIR), "table1.json")  # created when written
    if args.quick:
        counts, etas, ddpm_count = dict(evaluation.QUICK_COUNTS), list(evaluation.QUICK_ETAS), None
    else:
        counts, etas = dict(evaluation.TABLE1_COUNTS), list(evaluation.TABLE1_ETAS)
        ddpm_count = None if args.counts else evaluation.DDPM_COUNT
    ddpm_count = args.ddpm_count or ddpm_count
    counts = dict(args.counts) if args.counts else counts
    etas = args.etas or etas
    loaded = loading.load_model(args.model, args.device)
    if loaded.sample_shape != SAMPLE_SHAPE:
        raise usage.UsageError("ddim eval needs a digits model (1x8x8 samples); digits-FID is defined for digits only")
    scheduler = loaded.scheduler
    if args.clip_sample:
        scheduler = DDIMScheduler.from_config(scheduler.config, clip_sample=True)
    cells = evaluation.table1_cells(counts, etas, ddpm_count)
    for steps in sorted({cell.steps for cell in cells}):
        loading.check_steps(steps, scheduler, "S (of --counts, or 1000 for the DDPM comparison)")
    fid = FiniteFID()
    with timing.timed() as elapsed:
        results = run_cells(args, loaded.model, scheduler, cells, seeds, fid)
        floor = evaluation.floor_and_ceiling(fid, sorted({c.count for c in cells}), seeds)
        targets = evaluation.check_targets(results, counts, ddpm_count)
    report: dict[str, Any] = {
        "model": loaded.description,
        "scheduler": {k: v for k, v in scheduler.config.items() if not k.startswith("_")},
        "use_clipped_model_output": args.use_clipped_model_output,
        "seeds": seeds,
        "counts": {str(k): v for k, v in sorted(counts.items())},
        "ddpm_count": ddpm_count,
        **({"quick": True} if args.quick else {}),
        "batch_size": args.batch_size,
        "cells": [r.as_dict() for r in results],
        "floor": floor,
        "targets": targets,
        "seconds_total": elapsed[0],
    }
    markdown = evaluation.markdown_report(report)

    def write(folder: Path) -> None:
        (folder / "table1.json").write_text(evaluation_framework.report_json(report), encoding="utf-8")
        (folder / "table1.md").write_text(markdown, encoding="utf-8")
        evaluation.plot_report(report, str(folder / "table1.png"))

    outputs.write_together(out_dir, write, create=args.out_dir is None)
    print(markdown)
    print(f"wrote {out_dir}/table1.json, table1.md, table1.png in {report['seconds_total']:.0f} s")
    return 0


def run_cells(
    args: argparse.Namespace,
    model: Model,
    scheduler: DDIMScheduler,
    cells: list[evaluation.Cell],
    seeds: list[int],
    fid: DigitsFID,
) -> list[evaluation.CellResult]:
    """Every cell for every seed, with one progress bar over all (cell, seed) runs."""
    bar = evaluation_framework.seed_run_progress(len(cells) * len(seeds), "ddim eval", args.progress)
    results = []
    try:
        for cell in cells:
            bar.set_note(f"S={cell.steps} eta={cell.eta:g} N={cell.count}")
            results.append(
                evaluation.run_cell(
                    model,
                    scheduler,
                    cell,
                    seeds,
                    fid,
                    args.device,
                    on_seed=lambda: bar.update(),
                    use_clipped_model_output=args.use_clipped_model_output,
                    batch_size=args.batch_size,
                )
            )
    finally:
        bar.close()
    return results
