"""What the two evaluations share: seeds, timed seed runs, the seed spread, target checks, JSON text and plots.

Both ``ddim.app.evaluation`` (the DDIM paper's Table 1) and ``ddim.app.recipe_evaluation`` (the zero-terminal-SNR
recipe) run cells, each once per seed: every seed draws its samples (timed: the sampling alone), then scores
them. Results are reported as mean +- the spread over seeds, their findings as pass/fail targets, and the whole
run as indented JSON next to a Markdown report and PNG plots.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ddim.progress import Progress

Drawn = TypeVar("Drawn")
Score = TypeVar("Score")

#: Seeds per cell of a quick run (``ddim eval --quick``, with or without ``--recipe``).
QUICK_SEEDS = 2
#: The header of the targets table of both reports.
TARGETS_HEADER: tuple[str, str] = ("| target | met | measured |", "|---|---|---|")


def seed_list(first: int, count: int) -> list[int]:
    """The seeds of a run: ``first``, ``first + 1``, ..., ``count`` of them."""
    return list(range(first, first + count))


def seed_spread(values: Sequence[float]) -> float:
    """Standard deviation over seeds (ddof = 1; 0 for one seed)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def run_seeds(
    seeds: Sequence[int],
    draw: Callable[[int], Drawn],
    score: Callable[[Drawn], Score],
    on_seed: Callable[[], None] | None = None,
) -> tuple[list[Score], list[float]]:
    """For each seed, ``score(draw(seed))``; returns the scores and the wall seconds of each ``draw`` alone."""
    scores: list[Score] = []
    seconds: list[float] = []
    for seed in seeds:
        start = time.perf_counter()
        drawn = draw(seed)
        seconds.append(time.perf_counter() - start)
        scores.append(score(drawn))
        if on_seed is not None:
            on_seed()
    return scores, seconds


def seed_run_progress(runs: int, title: str, show: bool) -> Progress:
    """The progress bar of an evaluation: one step per (cell, seed) run."""
    return Progress(runs, title, "seed-run", show)


def target(name: str, passed: bool, detail: str) -> dict[str, Any]:
    """One target check of a report: what is claimed, whether the measurement meets it, and the measurement."""
    return {"target": name, "passed": bool(passed), "detail": detail}


def targets_table(targets: Sequence[dict[str, Any]]) -> list[str]:
    """The Markdown table of target checks: ``| target | met | measured |``, one row each."""
    return [
        *TARGETS_HEADER,
        *(f"| {t['target']} | {'yes' if t['passed'] else 'no'} | {t['detail']} |" for t in targets),
    ]


def report_json(report: dict[str, Any]) -> str:
    """A report as the evaluations write it: JSON indented by one, numpy scalars as floats, a final newline."""
    return json.dumps(report, indent=1, default=float) + "\n"


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (imported on first use: matplotlib is optional)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: str | Path) -> None:
    """Lay out ``figure``, write it as PNG to ``path`` and free it."""
    figure.tight_layout()
    figure.savefig(path, format="png")
    pyplot().close(figure)
