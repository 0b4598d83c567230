"""Per-step time of ``ddim.DDIMScheduler.step`` against diffusers' ``DDIMScheduler.step``, side by side.

Both run in this process on the same inputs, repetitions interleaved (ours, diffusers, ours, ...),
after a warm-up, median per call; on CUDA each repetition ends with a device sync. For eta > 0 both
get the same ``variance_noise`` (the noise draw is not timed). The timestep is a Python int, or the
element of ``scheduler.timesteps`` on the device (what pipelines pass: a 0-dim device tensor).

"floor" = bytes a fused step must move (read x_t, the model output and the noise, write x_{t-1} and
x_0) / the copy bandwidth (preallocated buffers, read + write counted), the copy timed with each case,
interleaved with its steps at the same thread count, so that both see the same machine load.
On CUDA, "ours graphed" is our step applied 50 times (tensor timesteps) replayed from one CUDA graph,
per step. On the CPU every case runs at each thread count of ``--threads`` (``torch.set_num_threads``
before each repetition; all counts interleaved in one measurement), with the floor at that count's copy
bandwidth; "ours / ours 1 thread" is our time at that count over ours on one thread.
On CUDA, for eta > 0 also with the noise drawn inside the kernel (``noise_source = "kernel"``),
against the eta = 0 floor (x_t and the model output read, x_{t-1} and x_0 written: no noise tensor).
Target at the memory-bound size: at most 1.1x that floor.

    python benchmarks/step_bench.py [--quick] [--device cpu|cuda|all] [--threads 1,2,8] [--shape 16x16x256x256]
        [--out results/step.json]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch

import ddim
import ddim.kernels
from common import (
    CONFIGS,
    DTYPES,
    copy_bandwidth,
    copy_call,
    devices,
    environment,
    interleaved_medians,
    print_table,
    write_json,
)

SHAPES: dict[str, tuple[int, ...]] = {
    "1x4x64x64": (1, 4, 64, 64),
    "1x4x128x128": (1, 4, 128, 128),
    "1x16x13x60x90": (1, 16, 13, 60, 90),
    "256x3x32x32": (256, 3, 32, 32),
}
#: Memory-bound sizes: 16.8M elements on the CPU, 134M (8x16x32x128x128) on a GPU.
MEMORY_BOUND = {"cpu": ("4x4x1024x1024", (4, 4, 1024, 1024)), "cuda": ("8x16x32x128x128", (8, 16, 32, 128, 128))}


def make_case(
    device: torch.device, shape: tuple[int, ...], dtype: torch.dtype, config: dict[str, Any], eta: float, kind: str
) -> tuple[Any, Any]:
    """The two step calls (ours, diffusers') for one case, closed over their inputs."""
    from diffusers import DDIMScheduler as DiffusersDDIM

    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, generator=g, device=device, dtype=dtype)
    m = torch.randn(shape, generator=g, device=device, dtype=dtype)
    z = torch.randn(shape, generator=g, device=device, dtype=dtype) if eta > 0 else None
    calls = []
    for cls in (ddim.DDIMScheduler, DiffusersDDIM):
        scheduler = cls(**config)
        scheduler.set_timesteps(50, device=device)
        t: Any = scheduler.timesteps[10] if kind == "tensor" else int(scheduler.timesteps[10])
        step = scheduler.step

        def call(step: Any = step, t: Any = t) -> Any:
            return step(m, t, x, eta=eta, variance_noise=z)

        calls.append(call)
    return calls[0], calls[1]


def graphed_steps(
    device: torch.device,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    config: dict[str, Any],
    eta: float,
    noise_source: str = "torch",
) -> tuple[Any, int]:
    """Our step applied ``len(timesteps)`` = 50 times, captured in one CUDA graph; returns (replay, steps)."""
    scheduler = ddim.DDIMScheduler(**config)
    scheduler.noise_source = noise_source
    scheduler.set_timesteps(50, device=device)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, generator=g, device=device, dtype=dtype)
    m = torch.randn(shape, generator=g, device=device, dtype=dtype)
    generator = torch.Generator(device=device).manual_seed(1) if eta > 0 else None
    steps = list(scheduler.timesteps.unbind(0))

    def loop() -> torch.Tensor:
        y = x
        for t in steps:
            y = scheduler.step(m, t, y, eta=eta, generator=generator, return_dict=False)[0]
        return y

    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        loop()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    if generator is not None:
        graph.register_generator_state(generator)
    with torch.cuda.graph(graph):
        loop()
    return graph.replay, len(steps)


def thread_setter(threads: int) -> Callable[[], None]:
    """Sets torch's intra-op thread count (the timed calls run after it)."""
    return lambda: torch.set_num_threads(threads)


def run(
    device: torch.device,
    shapes: dict[str, tuple[int, ...]],
    dtypes: list[str],
    reps: int,
    budget: float,
    thread_counts: list[int],
) -> list[dict[str, Any]]:
    """Every case at every thread count (CPU; CUDA: the current count), ours and diffusers interleaved."""
    if device.type == "cuda":
        thread_counts = [torch.get_num_threads()]
    copy_bytes = 256 << 20 if device.type == "cuda" else 64 << 20
    for threads in thread_counts:
        torch.set_num_threads(threads)
        bandwidth = copy_bandwidth(device, copy_bytes)
        print(f"\n{device}, {threads} threads: copy bandwidth {bandwidth / 1e9:.1f} GB/s (read + write)")
    copy, copied = copy_call(device, copy_bytes)
    rows = []
    for shape_name, shape in shapes.items():
        for dtype_name in dtypes:
            dtype = DTYPES[dtype_name]
            for config_name, config in CONFIGS.items():
                for eta in (0.0, 1.0):
                    for kind in ("int", "tensor"):
                        ours, theirs = make_case(device, shape, dtype, config, eta, kind)
                        setups = [thread_setter(k) for k in thread_counts for _ in (ours, theirs, copy)]
                        medians = interleaved_medians(
                            [ours, theirs, copy] * len(thread_counts), device, reps, budget, setups=setups
                        )
                        numel = 1
                        for s in shape:
                            numel *= s
                        moved = numel * dtype.itemsize * (4 + (eta > 0))
                        for i, threads in enumerate(thread_counts):
                            t_ours, t_theirs, t_copy = medians[3 * i : 3 * i + 3]
                            floor = moved / (copied / t_copy)
                            row = {
                                "device": device.type,
                                "shape": shape_name,
                                "dtype": dtype_name,
                                "config": config_name,
                                "eta": eta,
                                "timestep": kind,
                                "threads": threads,
                                "ours_us": t_ours * 1e6,
                                "diffusers_us": t_theirs * 1e6,
                                "speedup": t_theirs / t_ours,
                                "ours_scaling": t_ours / medians[0],
                                "floor_us": floor * 1e6,
                                "ours_floor": t_ours / floor,
                                "diffusers_floor": t_theirs / floor,
                            }
                            if device.type == "cuda" and kind == "tensor":
                                replay, n = graphed_steps(device, shape, dtype, config, eta)
                                (t_graph,) = interleaved_medians([replay], device, reps, budget)
                                row["ours_graph_us"] = t_graph / n * 1e6
                                row["graph_floor"] = t_graph / n / floor
                                if eta > 0 and ddim.kernels.triton_installed():
                                    # noise drawn in the kernel: against the eta = 0 floor (no noise tensor moved)
                                    replay, n = graphed_steps(device, shape, dtype, config, eta, noise_source="kernel")
                                    (t_kernel,) = interleaved_medians([replay], device, reps, budget)
                                    floor_eta0 = numel * dtype.itemsize * 4 / (copied / t_copy)
                                    row["ours_graph_kernel_noise_us"] = t_kernel / n * 1e6
                                    row["kernel_noise_eta0_floor"] = t_kernel / n / floor_eta0
                            rows.append(row)
                            print_table([row], COLUMNS) if len(rows) == 1 else print_row(row)
    torch.set_num_threads(thread_counts[0])
    return rows


COLUMNS = [
    ("shape", "shape", "s"),
    ("dtype", "dtype", "s"),
    ("config", "config", "s"),
    ("eta", "eta", ".0f"),
    ("timestep", "timestep", "s"),
    ("threads", "threads", "d"),
    ("ours_us", "ours us", ".1f"),
    ("diffusers_us", "diffusers us", ".1f"),
    ("speedup", "diffusers / ours", ".2f"),
    ("ours_scaling", "ours / ours 1 thread", ".2f"),
    ("floor_us", "floor us", ".2f"),
    ("ours_floor", "ours / floor", ".2f"),
    ("diffusers_floor", "diffusers / floor", ".2f"),
    ("ours_graph_us", "ours graphed us", ".2f"),
    ("graph_floor", "graphed / floor", ".2f"),
    ("ours_graph_kernel_noise_us", "graphed, kernel noise us", ".2f"),
    ("kernel_noise_eta0_floor", "kernel noise / eta-0 floor", ".2f"),
]


def print_row(row: dict[str, Any]) -> None:
    cells = [format(row[key], fmt) if row.get(key) is not None else "-" for key, _, fmt in COLUMNS]
    print("| " + " | ".join(cells) + " |", flush=True)


def thread_counts(text: str) -> list[int]:
    """``--threads``: positive ints, comma-separated; 1 first (the reference of the scaling column)."""
    try:
        counts = {int(part) for part in text.split(",")}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected thread counts like 1,2,8, got {text!r}") from None
    if min(counts) < 1:
        raise argparse.ArgumentTypeError(f"thread counts must be at least 1, got {text!r}")
    return sorted(counts | {1})


def shape_arg(text: str) -> tuple[int, ...]:
    """``--shape``: positive dimensions joined by x, e.g. 16x16x256x256."""
    try:
        dims = tuple(int(part) for part in text.split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a shape like 16x16x256x256, got {text!r}") from None
    if min(dims) < 1:
        raise argparse.ArgumentTypeError(f"dimensions must be at least 1, got {text!r}")
    return dims


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes, dtypes and repetitions (CPU smoke run)")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--reps", type=int, default=None, help="interleaved repetitions (default 7; quick 5)")
    parser.add_argument("--budget", type=float, default=None, help="seconds per repetition and function")
    parser.add_argument(
        "--threads",
        type=thread_counts,
        default=[1, 2],
        help="CPU intra-op thread counts, comma-separated (default 1,2; 1 is always included)",
    )
    parser.add_argument("--shape", type=shape_arg, help="only this shape, e.g. 16x16x256x256 (fp32 with --quick)")
    parser.add_argument("--shapes", nargs="+", default=None, help="shape names (default: all, or the quick pair)")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=None)
    parser.add_argument("--out", default="results/step.json")
    args = parser.parse_args(argv)
    reps = args.reps or (5 if args.quick else 7)
    budget = args.budget or (0.02 if args.quick else 0.05)
    rows: list[dict[str, Any]] = []
    envs = {}
    for device in devices(args.device):
        big_name, big_shape = MEMORY_BOUND[device.type]
        known = {**SHAPES, big_name: big_shape}
        if args.quick:
            shapes = {"1x4x64x64": SHAPES["1x4x64x64"], big_name: big_shape}
            dtypes = ["fp32"]
        else:
            shapes, dtypes = known, ["fp32", "fp16", "bf16"]
        if args.shapes:
            unknown = [name for name in args.shapes if name not in known]
            if unknown:
                raise SystemExit(f"--shapes: unknown {unknown}; known on {device.type}: {sorted(known)}")
            shapes = {name: known[name] for name in args.shapes}
        if args.shape is not None:
            shapes = {"x".join(map(str, args.shape)): args.shape}
        dtypes = args.dtypes or dtypes
        rows += run(device, shapes, dtypes, reps, budget, args.threads)
        envs[device.type] = environment(device)
    for row in rows:
        if row.get("kernel_noise_eta0_floor") is not None and row["shape"] == MEMORY_BOUND["cuda"][0]:
            ratio = row["kernel_noise_eta0_floor"]
            print(
                f"target ({row['shape']} {row['dtype']} {row['config']}): graphed eta 1 with kernel noise <= 1.1x the "
                f"eta-0 floor: {ratio:.2f}x ({'met' if ratio <= 1.1 else 'MISSED'})"
            )
    path = write_json(args.out, {"environment": envs, "rows": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
