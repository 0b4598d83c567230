"""How many Python functions (and in how many files) one warm ``step`` call walks, here and in another revision.

Counts the distinct Python functions entered (``sys.setprofile`` "call" events; builtins and C functions
are not counted) during one ``step`` after warm-up, for a host int timestep and for a per-row CPU
timestep tensor (the device path), default config, eta 0 and 1.

    git worktree add /tmp/before REV
    python benchmarks/step_call_count.py --before /tmp/before/src/ddim
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

import torch

import ddim
from before_after_step import load_renamed


def walked(call: Any) -> tuple[set[tuple[str, str]], int]:
    """(distinct (file, function) entered, number of calls) during ``call()``."""
    seen: set[tuple[str, str]] = set()
    count = 0

    def profile(frame: FrameType, event: str, arg: object) -> None:
        nonlocal count
        if event == "call":
            code = frame.f_code
            seen.add((code.co_filename, code.co_qualname))
            count += 1

    sys.setprofile(profile)
    try:
        call()
    finally:
        sys.setprofile(None)
    return seen, count


def report(name: str, library: Any) -> None:
    scheduler = library.DDIMScheduler()
    scheduler.set_timesteps(50)
    x, m, z = (torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    cases = {
        "int timestep, eta 0": lambda: scheduler.step(m, 981, x),
        "int timestep, eta 1": lambda: scheduler.step(m, 981, x, eta=1.0, variance_noise=z),
        "per-row tensor timestep, eta 0": lambda: scheduler.step(m, torch.tensor([981, 961]), x),
    }
    for case, call in cases.items():
        call()  # warm: tables built
        functions, calls = walked(call)
        files = {file for file, _ in functions}
        print(f"| {name} | {case} | {len(functions)} | {len(files)} | {calls} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="another revision's src/ddim folder, counted side by side")
    args = parser.parse_args()
    print("| revision | case | functions | files | calls |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        if args.before is not None:
            report("before", load_renamed(args.before, Path(folder)))
        report("this checkout", ddim)


if __name__ == "__main__":
    main()
