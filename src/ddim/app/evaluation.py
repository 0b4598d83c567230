"""The DDIM paper's Table 1 on the embedded digits model: digits-FID against steps S and eta.

Cells: S in {10, 20, 50, 100, 1000} x eta in {0, 0.2, 0.5, 1} (DDIM paper, Table 1 and eq. 16),
each run with several seeds. DDPM (1000 steps, ancestral sampling with the posterior variance
beta~_t, diffusers' ``DDPMScheduler`` default) is exactly the eta = 1, S = 1000 cell: with eta = 1
and every timestep visited, the DDIM step is the DDPM step (DDIM paper, sec. 4.1), so it is reported
from that cell. FID is biased by the sample count, so every comparison is made between cells of
equal count: each S has its own count (``counts``, fewer samples for larger S), the same for all
eta, and the DDIM-vs-DDPM comparison (S = 50, eta = 0 against S = 1000, eta = 1) has its own count
(``ddpm_count``), each of its two cells run again at that count unless the grid has it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ddim.app.digits.data import SAMPLE_SHAPE
from ddim.app.digits.fid import DigitsFID
from ddim.app.evaluation_framework import pyplot, run_seeds, save_figure, seed_spread, target, targets_table
from ddim.model import Model
from ddim.sampling import sample
from ddim.scheduler import DDIMScheduler
from ddim.validation import check_int

TABLE1_ETAS: tuple[float, ...] = (0.0, 0.2, 0.5, 1.0)
DDPM_STEPS = 1000
#: Samples per seed for each S of the full evaluation (FID noise falls with the count; cost grows with S).
#: At N = 1000 the seed spread of digits-FID (3-5) hid the eta ordering at S = 10 and 20; at N = 5000 it is < 1.
TABLE1_COUNTS: dict[int, int] = {10: 5000, 20: 5000, 50: 1000, 100: 500, 1000: 100}
#: The DDIM setting compared with DDPM.
REFERENCE_STEPS = 50
#: Samples per seed of the DDIM-vs-DDPM comparison: at N = 500 the seed spread of both was 2.5-4 (mean 8-12).
DDPM_COUNT = 1000
#: The reduced grid of ``ddim eval --quick`` (with ``QUICK_SEEDS`` seeds): a smoke test, too small to judge targets.
QUICK_COUNTS: dict[int, int] = {10: 300, 20: 300, 50: 300}
QUICK_ETAS: tuple[float, ...] = (0.0, 1.0)
#: Said above the targets of a quick run: its "met" column is no verdict on the paper.
QUICK_NOTE = (
    "Quick mode (--quick: N = 300 per seed, 2 seeds) cannot judge these targets: at this N the seed spread of "
    "digits-FID hides the differences they test, so a 'no' is no finding. "
    "Run `ddim eval` without --quick to judge them."
)
#: Samples per model call of the evaluation: per sample, batches of 256-1000 ran 1.5x faster on this CPU than 5000.
EVAL_BATCH_SIZE = 500


@dataclass(frozen=True)
class Cell:
    """One setting: S steps, eta, and the number of samples per seed."""

    steps: int
    eta: float
    count: int


@dataclass
class CellResult:
    """digits-FID and wall time of each seed of a cell."""

    cell: Cell
    fids: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return float(np.mean(self.fids))

    @property
    def spread(self) -> float:
        """Standard deviation over seeds (ddof = 1; 0 for one seed)."""
        return seed_spread(self.fids)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CellResult:
        """The inverse of :meth:`as_dict` (a cell of a ``table1.json`` report)."""
        return cls(Cell(values["steps"], values["eta"], values["count"]), values["fids"], values["seconds"])

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self.cell),
            "fids": self.fids,
            "fid_mean": self.mean,
            "fid_std": self.spread,
            "seconds": self.seconds,
        }


def table1_cells(
    counts: dict[int, int], etas: Sequence[float] = TABLE1_ETAS, ddpm_count: int | None = None
) -> list[Cell]:
    """Every (S, eta) with S's count; with ``ddpm_count``, also S = 50, eta = 0 and DDPM at that count."""
    cells = [Cell(s, float(e), n) for e in etas for s, n in sorted(counts.items())]
    if ddpm_count is not None:
        for extra in (Cell(REFERENCE_STEPS, 0.0, ddpm_count), Cell(DDPM_STEPS, 1.0, ddpm_count)):
            if extra not in cells:
                cells.append(extra)
    return cells


def run_cell(
    model: Model,
    scheduler: DDIMScheduler,
    cell: Cell,
    seeds: Sequence[int],
    fid: DigitsFID,
    device: str | torch.device = "cpu",
    on_seed: Callable[[], None] | None = None,
    use_clipped_model_output: bool = False,
    batch_size: int = EVAL_BATCH_SIZE,
) -> CellResult:
    """Sample ``cell.count`` digits per seed, ``batch_size`` at a time.

    One ``torch.Generator().manual_seed(seed)`` per seed gives every batch's x_T and step noise in
    turn, so the samples depend on the seed and on ``batch_size``.
    """
    check_int("batch_size", batch_size, minimum=1)

    def draw(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        batches = [
            sample(
                model,
                scheduler,
                (min(batch_size, cell.count - first), *SAMPLE_SHAPE),
                num_inference_steps=cell.steps,
                eta=cell.eta,
                generator=generator,
                device=device,
                progress=False,
                use_clipped_model_output=use_clipped_model_output,
            )
            for first in range(0, cell.count, batch_size)
        ]
        return torch.cat(batches)

    fids, seconds = run_seeds(seeds, draw, fid, on_seed)
    return CellResult(cell, fids, seconds)


def floor_and_ceiling(fid: DigitsFID, counts: Sequence[int], seeds: Sequence[int]) -> dict[str, dict[str, list[float]]]:
    """For each sample count: the held-out, split-half and noise FIDs of every seed (see ``DigitsFID``)."""
    table: dict[str, dict[str, list[float]]] = {}
    for count in sorted(set(counts)):
        runs = [fid.floor_and_ceiling(count, seed) for seed in seeds]
        table[str(count)] = {key: [run[key] for run in runs] for key in runs[0]}
    return table


def find(results: Sequence[CellResult], steps: int, eta: float, count: int) -> CellResult | None:
    for result in results:
        if result.cell.steps == steps and math.isclose(result.cell.eta, eta) and result.cell.count == count:
            return result
    return None


def check_targets(
    results: Sequence[CellResult], counts: dict[int, int], ddpm_count: int | None = None
) -> list[dict[str, Any]]:
    """The paper's findings as pass/fail checks (only those whose cells were run), at equal counts.

    DDIM-vs-DDPM is checked at ``ddpm_count`` (default: the grid's count for S = 1000).
    """
    checks: list[dict[str, Any]] = []

    def add(name: str, passed: bool, detail: str) -> None:
        checks.append(target(name, passed, detail))

    def fmt(r: CellResult) -> str:
        return f"{r.mean:.2f} +- {r.spread:.2f}"

    n = counts.get(10, 0)
    a, b = find(results, 10, 0.0, n), find(results, 10, 1.0, n)
    if a and b:
        spread = max(a.spread, b.spread)
        add(
            "S=10: eta=0 beats eta=1 by > 3x the seed spread",
            b.mean - a.mean > 3 * spread,
            f"eta=0 {fmt(a)}, eta=1 {fmt(b)} (N={n}); gap {b.mean - a.mean:.2f} vs 3 x spread {3 * spread:.2f}",
        )
    n = counts.get(20, 0)
    a, b = find(results, 20, 0.0, n), find(results, 20, 1.0, n)
    if a and b:
        add("S=20: eta=0 no worse than eta=1", a.mean <= b.mean, f"eta=0 {fmt(a)}, eta=1 {fmt(b)} (N={n})")
    n = ddpm_count if ddpm_count is not None else counts.get(DDPM_STEPS, 0)
    a, b = find(results, REFERENCE_STEPS, 0.0, n), find(results, DDPM_STEPS, 1.0, n)
    if a and b:
        add(
            f"DDIM S={REFERENCE_STEPS} eta=0 within 1.5x of DDPM (1000 steps)",
            a.mean <= 1.5 * b.mean,
            f"DDIM {fmt(a)}, DDPM {fmt(b)} (N={n}); ratio {a.mean / b.mean:.2f}",
        )
    n = counts.get(DDPM_STEPS, 0)
    last = [r for r in results if r.cell.steps == DDPM_STEPS and r.cell.count == n]
    if len(last) > 1:
        means = [r.mean for r in last]
        spread = max(r.spread for r in last)
        add(
            "S=1000: all eta close (range of means <= 3x the largest seed spread)",
            max(means) - min(means) <= 3 * spread,
            f"means {', '.join(f'{r.cell.eta:g}: {r.mean:.2f}' for r in last)} (N={n}); "
            f"range {max(means) - min(means):.2f} vs 3 x spread {3 * spread:.2f}",
        )
    return checks


# --------------------------------------------------------------------------- reporting
def cell_label(cell: Cell) -> str:
    """``DDPM`` for eta 1 at S = 1000, else ``DDIM S=.., eta=..``."""
    if cell.steps == DDPM_STEPS and cell.eta == 1.0:
        return f"DDPM (S={DDPM_STEPS}, eta=1)"
    return f"DDIM S={cell.steps}, eta={cell.eta:g}"


def markdown_report(report: dict[str, Any]) -> str:
    """Table 1 as Markdown (rows: eta, columns: S), wall times, the floor and ceiling, and the target checks."""
    cells = [CellResult.from_dict(c) for c in report["cells"]]
    counts = {int(k): v for k, v in report["counts"].items()}
    steps = sorted(counts)
    etas = sorted({r.cell.eta for r in cells})
    header = "| | " + " | ".join(f"S={s} (N={counts[s]})" for s in steps) + " |"
    rule = "|---|" + "---|" * len(steps)

    def rows(value: Callable[[CellResult], str]) -> list[str]:
        lines = []
        for eta in etas:
            found = [find(cells, s, eta, counts[s]) for s in steps]
            lines.append(f"| eta={eta:g} | " + " | ".join(value(r) if r else "" for r in found) + " |")
        ddpm = find(cells, DDPM_STEPS, 1.0, counts.get(DDPM_STEPS, 0))
        if ddpm is not None:
            lines.append("| DDPM | " + " | ".join(value(ddpm) if s == DDPM_STEPS else "" for s in steps) + " |")
        return lines

    lines = [
        f"digits-FID, mean +- std over {len(report['seeds'])} seeds (lower is better); N = samples per seed. "
        "DDPM = eta 1 at S = 1000 (the same sampler).",
        "",
        header,
        rule,
        *rows(lambda r: f"{r.mean:.2f} +- {r.spread:.2f}"),
    ]
    extra = [r for r in cells if r.cell.count != counts.get(r.cell.steps)]
    if extra:
        lines += [
            "",
            "Cells outside the grid (DDIM vs DDPM at equal N):",
            "",
            "| cell | N | digits-FID | wall per seed (s) |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {cell_label(r.cell)} | {r.cell.count} | {r.mean:.2f} +- {r.spread:.2f} | {np.mean(r.seconds):.1f} |"
            for r in extra
        ]
    lines += ["", "Wall time per seed (s):", "", header, rule, *rows(lambda r: f"{np.mean(r.seconds):.1f}")]
    lines += [
        "",
        "| reference at N | resampled train vs train | held-out real vs train | split-half real | Gaussian noise |",
        "|---|---|---|---|---|",
    ]
    for count, values in report["floor"].items():
        lines.append(
            f"| {count} | "
            + " | ".join(
                f"{np.mean(values[k]):.2f} +- {seed_spread(values[k]):.2f}" if k in values else "n/a"
                for k in ("resampled", "held_out", "split_half", "noise")
            )
            + " |"
        )
    if report["targets"]:
        if report.get("quick"):
            lines += ["", QUICK_NOTE]
        lines += ["", *targets_table(report["targets"])]
    return "\n".join(lines) + "\n"


def plot_report(report: dict[str, Any], path: str) -> None:
    """FID against S (log x axis), one line per eta, seed spread as error bars, the real-data floor dotted."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    cells = report["cells"]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, eta in enumerate(sorted({c["eta"] for c in cells})):
        line = sorted(
            (c for c in cells if math.isclose(c["eta"], eta) and c["count"] == report["counts"].get(str(c["steps"]))),
            key=lambda c: c["steps"],
        )
        # Points are joined only where N is equal: FID is biased upwards at small N.
        for count in sorted({c["count"] for c in line}, reverse=True):
            group = [c for c in line if c["count"] == count]
            axis.errorbar(
                [c["steps"] * (1 + 0.03 * (index - 1.5)) for c in group],
                [c["fid_mean"] for c in group],
                yerr=[c["fid_std"] for c in group],
                marker="o",
                capsize=3,
                color=colors[index % len(colors)],
                label=f"eta = {eta:g}" if count == line[0]["count"] else None,
            )
    extra = [c for c in cells if c["count"] != report["counts"].get(str(c["steps"]))]
    for c, marker in zip(extra, "sDv^<>" * len(extra), strict=False):
        axis.errorbar(
            [c["steps"]],
            [c["fid_mean"]],
            yerr=[c["fid_std"]],
            marker=marker,
            color="black",
            capsize=3,
            linestyle="none",
            label=f"{cell_label(Cell(c['steps'], c['eta'], c['count']))} at N={c['count']}",
        )
    for count, values in report["floor"].items():
        kind = "resampled"
        level = float(np.mean(values[kind]))
        axis.axhline(level, linestyle=":", color="grey")
        # Labelled at the first column of its own N (a floor run for another N: at the first column).
        columns = [int(s) for s, n in report["counts"].items() if str(n) == str(count)]
        where = min(columns) if columns else int(min(report["counts"], key=int))
        axis.annotate(f"{kind} real, N={count}", (where, level), fontsize=7, color="grey")
    axis.set_xscale("log")
    axis.set_xticks([int(k) for k in report["counts"]], [f"{k}\nN={v}" for k, v in report["counts"].items()])
    axis.set_xlabel("sampling steps S (log scale)")
    axis.set_ylabel("digits-FID (lower is better)")
    counts = ", ".join(f"S={k}: {v}" for k, v in report["counts"].items())
    axis.set_title(f"DDIM on digits, samples per seed: {counts}", fontsize=8)
    axis.legend(fontsize=7)
    save_figure(figure, path)
