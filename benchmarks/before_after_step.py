"""CPU step time of this checkout's ``ddim`` against another revision's, side by side in one process.

The other revision's package is copied to a temporary folder under the name ``ddim_before`` (imports
rewritten), so both load at once; steps are timed interleaved (before, after, before, ...), and the
minimum over the repetitions of each side is reported (the least disturbed measurement on a shared CPU).

    git worktree add /tmp/before REV
    python benchmarks/before_after_step.py /tmp/before/src/ddim [--threads 2] [--shape 16x16x256x256]

Each timed call drops the step's outputs before the next (as a sampling loop does a step later).
"""

from __future__ import annotations

import argparse
import importlib
import re
import shutil
import statistics
import sys
import tempfile
import timeit
from pathlib import Path
from typing import Any

import torch

import ddim
from common import CONFIGS

SHAPE = (1, 4, 64, 64)


def load_renamed(package: Path, folder: Path) -> Any:
    """``package`` (a ``ddim`` source folder) imported as ``ddim_before``."""
    target = folder / "ddim_before"
    shutil.copytree(package, target)
    for path in target.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        text = re.sub(r"\bfrom ddim(\.| import)", r"from ddim_before\1", text)
        text = re.sub(r"\bimport ddim\b", "import ddim_before", text)
        path.write_text(text, encoding="utf-8")
    sys.path.insert(0, str(folder))
    return importlib.import_module("ddim_before")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="the other revision's src/ddim folder")
    parser.add_argument("--repetitions", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--shape", default="x".join(map(str, SHAPE)), help="sample shape, e.g. 16x16x256x256")
    args = parser.parse_args()
    shape = tuple(int(size) for size in args.shape.split("x"))
    numel = 1
    for size in shape:
        numel *= size
    number = max(1, 200 * 16384 // numel)  # calls per timing: 200 at 1x4x64x64, one from 16x larger
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        before = load_renamed(args.before, Path(folder))
        print(
            f"before: {args.before}; after: {Path(ddim.__file__).parent}; shape {shape}, fp32, {args.threads} thread(s)"
        )
        print("| config | eta | timestep | before us | after us | after / before |\n|---|---|---|---|---|---|")
        ratios = []
        for name, config in CONFIGS.items():
            for eta in (0.0, 1.0):
                for kind in ("int", "tensor"):
                    calls = []
                    for library in (before, ddim):
                        scheduler = library.DDIMScheduler(**config)
                        scheduler.set_timesteps(50)
                        g = torch.Generator().manual_seed(0)
                        x, m, z = (torch.randn(shape, generator=g) for _ in range(3))
                        t = scheduler.timesteps[10] if kind == "tensor" else int(scheduler.timesteps[10])
                        noise = z if eta else None
                        calls.append(
                            lambda s=scheduler, t=t, x=x, m=m, n=noise, e=eta: s.step(m, t, x, eta=e, variance_noise=n)
                        )
                    for call in calls:
                        timeit.repeat(call, number=max(3, number), repeat=1)  # warm-up: tables, caches
                    times: tuple[list[float], list[float]] = ([], [])
                    for _ in range(args.repetitions):
                        for side, call in enumerate(calls):
                            times[side].append(min(timeit.repeat(call, number=number, repeat=3)) / number * 1e6)
                    old, new = min(times[0]), min(times[1])
                    ratios.append(new / old)
                    print(f"| {name} | {eta:g} | {kind} | {old:.2f} | {new:.2f} | {new / old:.3f} |")
        print(f"geometric mean after / before: {statistics.geometric_mean(ratios):.3f}")


if __name__ == "__main__":
    main()
