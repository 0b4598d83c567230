"""Shared pieces of the benchmarks: scheduler configs, timing with interleaved repetitions, output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

#: Stable Diffusion's scheduler config (as shipped with SD 1.x pipelines) and the constructor defaults.
CONFIGS: dict[str, dict[str, Any]] = {
    "sd": {
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
    },
    "default": {},
}

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def calls_for(fn: Callable[[], object], device: torch.device, budget_s: float, cap: int) -> int:
    """Number of calls that take about ``budget_s`` (at least 1, at most ``cap``), after one warm-up."""
    fn()
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    once = max(time.perf_counter() - start, 1e-7)
    return max(1, min(cap, int(budget_s / once)))


def interleaved_medians(
    fns: Sequence[Callable[[], object]],
    device: torch.device,
    reps: int,
    budget_s: float,
    cap: int = 2000,
    setups: Sequence[Callable[[], object]] | None = None,
) -> list[float]:
    """Median seconds per call of each function; repetitions alternate between the functions.

    Each repetition runs a function ``n`` times back to back (``n`` calibrated per function), with a
    device sync at its end, so asynchronous launches are charged in full. ``setups`` (one per function,
    untimed) run before each function's calibration and each of its repetitions (e.g. a thread count).
    """
    return [statistics.median(t) for t in interleaved_times(fns, device, reps, budget_s, cap, setups)]


def interleaved_times(
    fns: Sequence[Callable[[], object]],
    device: torch.device,
    reps: int,
    budget_s: float,
    cap: int = 2000,
    setups: Sequence[Callable[[], object]] | None = None,
) -> list[list[float]]:
    """Seconds per call of each function in each repetition (see :func:`interleaved_medians`): entry
    ``[i][r]`` is function i in repetition r, so the functions of one repetition ran side by side."""
    prepare = list(setups) if setups is not None else [lambda: None] * len(fns)
    counts = []
    for fn, setup in zip(fns, prepare, strict=True):
        setup()
        counts.append(calls_for(fn, device, budget_s, cap))
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(reps):
        for fn, n, out, setup in zip(fns, counts, times, prepare, strict=True):
            setup()
            synchronize(device)
            start = time.perf_counter()
            for _ in range(n):
                fn()
            synchronize(device)
            out.append((time.perf_counter() - start) / n)
    return times


def captured(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """``fn`` recorded in a CUDA graph after a warm-up on a side stream (no autograd); returns the replay."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side), torch.no_grad():
        fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        fn()
    return graph.replay


def copy_call(device: torch.device, nbytes: int) -> tuple[Callable[[], object], int]:
    """A copy between two preallocated ``nbytes`` buffers, and the bytes it moves (read plus written)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    return (lambda: dst.copy_(src)), 2 * src.numel() * 4


def copy_bandwidth(device: torch.device, nbytes: int, reps: int = 7) -> float:
    """Device copy bandwidth in bytes/s, counting bytes read plus written (preallocated buffers)."""
    copy, moved = copy_call(device, nbytes)
    (seconds,) = interleaved_medians([copy], device, reps, budget_s=0.05, cap=200)
    return moved / seconds


def environment(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE", ""),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        info["diffusers"] = None
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def devices(choice: str) -> list[torch.device]:
    """``cpu``, ``cuda`` or ``all`` (CPU, plus CUDA when available)."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    found = [torch.device("cpu")] if choice in ("cpu", "all") else []
    if choice in ("cuda", "all") and torch.cuda.is_available():
        found.append(torch.device("cuda"))
    return found


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(payload, indent=2) + "\n")
    return target


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> None:
    """Markdown table; ``columns`` holds (key, header, format)."""
    print("| " + " | ".join(header for _, header, _ in columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        cells = [format(row[key], fmt) if row.get(key) is not None else "-" for key, _, fmt in columns]
        print("| " + " | ".join(cells) + " |")
    sys.stdout.flush()
