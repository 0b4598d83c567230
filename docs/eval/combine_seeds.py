"""Pool the DDIM (S=50, eta=0) vs DDPM cells at N=1000 of two `ddim eval` runs with disjoint seeds.

Usage: python docs/eval/combine_seeds.py docs/eval/table1.json docs/eval/seeds_5_14/table1.json
Prints each side's per-seed FIDs, mean +- std, the ratio of means, and a 95% bootstrap interval of that
ratio (seeds resampled with replacement, each side independently, 20,000 times, numpy seed 0).
"""

from __future__ import annotations

import json
import sys

import numpy as np

from ddim.evaluation import DDPM_STEPS, CellResult, find, seed_spread


def pooled(paths: list[str], steps: int, eta: float, count: int) -> np.ndarray:
    """The per-seed FIDs of the cell (steps, eta, count) of every report in ``paths``, in order."""
    values: list[float] = []
    for path in paths:
        with open(path) as handle:
            found = find([CellResult.from_dict(c) for c in json.load(handle)["cells"]], steps, eta, count)
        values += found.fids if found is not None else []
    return np.asarray(values)


def main(paths: list[str]) -> None:
    ddim, ddpm = pooled(paths, 50, 0.0, 1000), pooled(paths, DDPM_STEPS, 1.0, 1000)
    for name, values in (("DDIM S=50 eta=0", ddim), ("DDPM S=1000", ddpm)):
        spread = seed_spread(values.tolist())
        print(f"{name}: {len(values)} seeds, {values.mean():.2f} +- {spread:.2f}", values.round(2).tolist())
    rng = np.random.default_rng(0)
    ratios = [rng.choice(ddim, ddim.size).mean() / rng.choice(ddpm, ddpm.size).mean() for _ in range(20_000)]
    low, high = np.percentile(ratios, [2.5, 97.5])
    print(f"ratio of means {ddim.mean() / ddpm.mean():.2f}, 95% bootstrap interval {low:.2f}-{high:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
