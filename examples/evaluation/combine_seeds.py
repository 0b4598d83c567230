"""Pool the DDIM (S=50, eta=0) vs DDPM cells at one N of `ddim eval` runs with disjoint seeds.

Usage, from the repository root (the two commands of docs/evaluation.md)::

    python examples/evaluation/combine_seeds.py docs/eval/table1.json docs/eval/seeds_5_14/table1.json
    python examples/evaluation/combine_seeds.py --count 2000 \\
        docs/eval/n2000/table1.json docs/eval/n2000_seeds_5_9/table1.json

Prints each side's per-seed FIDs, mean +- std, the ratio of means, and a 95% bootstrap interval of that
ratio (seeds resampled with replacement, each side independently, 20,000 times, numpy seed 0).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from ddim.app.evaluation import DDPM_COUNT, DDPM_STEPS, REFERENCE_STEPS, CellResult, find, seed_spread


def pooled(paths: list[str], steps: int, eta: float, count: int) -> np.ndarray:
    """The per-seed FIDs of the cell (steps, eta, count) of every report in ``paths``, in order."""
    values: list[float] = []
    for path in paths:
        with open(path) as handle:
            found = find([CellResult.from_dict(c) for c in json.load(handle)["cells"]], steps, eta, count)
        values += found.fids if found is not None else []
    return np.asarray(values)


def main(paths: list[str], count: int) -> None:
    ddim, ddpm = pooled(paths, REFERENCE_STEPS, 0.0, count), pooled(paths, DDPM_STEPS, 1.0, count)
    if ddim.size == 0 or ddpm.size == 0:
        raise SystemExit(f"no DDIM (S=50, eta=0) or DDPM cell at N={count} in {paths}")
    for name, values in (("DDIM S=50 eta=0", ddim), ("DDPM S=1000", ddpm)):
        spread = seed_spread(values.tolist())
        print(f"{name}: {len(values)} seeds, {values.mean():.2f} +- {spread:.2f}", values.round(2).tolist())
    rng = np.random.default_rng(0)
    ratios = [rng.choice(ddim, ddim.size).mean() / rng.choice(ddpm, ddpm.size).mean() for _ in range(20_000)]
    low, high = np.percentile(ratios, [2.5, 97.5])
    print(f"ratio of means {ddim.mean() / ddpm.mean():.2f}, 95% bootstrap interval {low:.2f}-{high:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", help="table1.json files of `ddim eval` runs")
    parser.add_argument(
        "--count", type=int, default=DDPM_COUNT, help=f"samples per seed N of the cells (default: {DDPM_COUNT})"
    )
    arguments = parser.parse_args()
    main(arguments.reports, arguments.count)
