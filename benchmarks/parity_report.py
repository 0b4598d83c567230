"""Print the size and the largest deviations of the differential suite against diffusers 0.42.1.

Runs every case of ``tests/library/test_differential.py`` (same seeded configurations) and prints the number of
configurations, cases (config x eta x dtype x use_clipped_model_output) and comparisons, then the largest
relative deviation of each kind (see that module for the metric). Run:
``OMP_NUM_THREADS=1 python benchmarks/parity_report.py``.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

SUITE = Path(__file__).resolve().parent.parent / "tests" / "library" / "test_differential.py"


def main() -> int:
    spec = importlib.util.spec_from_file_location("test_differential", SUITE)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {SUITE}")
    suite = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = suite
    spec.loader.exec_module(suite)
    start = time.perf_counter()
    worst: dict[str, float] = {}
    cases = comparisons = diffusers_nan = 0
    failing = []
    for index in range(suite.NUM_CONFIGS):
        deviation = suite.run_config(index)
        cases += deviation.cases
        comparisons += deviation.comparisons
        diffusers_nan += deviation.diffusers_nan
        if suite.tolerance_failures(deviation):
            failing.append(index)
        for kind, value in deviation.worst.items():
            worst[kind] = max(worst.get(kind, 0.0), value)
    print(f"configurations: {suite.NUM_CONFIGS}, cases: {cases}, comparisons: {comparisons}")
    print(f"steps where diffusers gave NaN and ours a finite value (eta=1, zero SNR): {diffusers_nan}")
    print(f"tolerances: fp64 vs widened {suite.FP64_TOL:g}, fp32 vs widened/stock {suite.FP32_TOL:g}")
    for kind in sorted(worst):
        print(f"  {kind:45s} {worst[kind]:.3e}")
    print(f"configs over tolerance: {failing or 'none'}; {time.perf_counter() - start:.1f} s")
    return 1 if failing else 0


if __name__ == "__main__":
    raise SystemExit(main())
