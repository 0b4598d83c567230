"""Where the time of one small DDIM step goes: the launch alone and the whole step, ours against diffusers'.

At small shapes a step costs what the host spends issuing it. Timed interleaved in one process
(medians; each row warmed up first; a device sync after each repetition), 1x4x64x64 float32, default
config, eta 0 and 1, int and device timestep:

- ``diffusers``: diffusers' ``DDIMScheduler.step``;
- ``ours``: our step (the fused kernel, launched directly once its binding is verified);
- ``ours_jit``: our step with the direct launch off (``ddim.kernels.direct_launch.ENABLED = False``);
- ``ours_torch``: our step on the pure-torch path (``ddim.kernels.ENABLED = False``);
- ``launch_direct``: the prepared launch alone through the checked direct launcher;
- ``launch_jit``: the same launch through Triton's ``kernel[grid](...)``.

Targets (CUDA, 1x4x64x64): the eager step at most 20 us and at least 6x faster than diffusers' in the
same run; each is printed as met or MISSED. Without CUDA only the step rows run ("no CUDA").

    python benchmarks/step_overhead.py [--device cuda|cpu] [--out results/step_overhead.json]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
from collections.abc import Callable
from typing import Any

import torch

import ddim
import ddim.kernels
from common import environment, interleaved_medians, write_json


def switched(fn: Callable[[], object], module: Any, value: bool) -> Callable[[], object]:
    """``fn`` run with ``module.ENABLED`` set to ``value`` (restored after)."""

    def call() -> object:
        previous, module.ENABLED = module.ENABLED, value
        try:
            return fn()
        finally:
            module.ENABLED = previous

    return call


def launch_rows(step: Callable[[], object]) -> dict[str, Callable[[], object]]:
    """The launch of our ``step`` alone (direct and through the JIT): its arguments are recorded from
    one call of the step (a spy on the launcher), then replayed."""
    from ddim.kernels import triton_update as tu

    launcher = tu.launcher()
    recorded: list[tuple[Any, ...]] = []
    original = launcher.launch

    def spy(*args: Any) -> None:
        recorded.append(args)
        original(*args)

    launcher.launch = spy  # type: ignore[method-assign]
    try:
        step()
    finally:
        del launcher.launch  # the class's method again
    ((key, grid, arguments, outputs, num_warps),) = recorded
    return {
        "launch_direct": lambda: launcher.launch(key, grid, arguments, outputs, num_warps),
        "launch_jit": lambda: launcher.jit_launch(grid, arguments, num_warps),
    }


def profile_top(fn: Callable[[], object], calls: int, lines: int) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        fn()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(lines)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--budget", type=float, default=0.02, help="seconds per repetition and function")
    parser.add_argument("--out", default="results/step_overhead.json")
    args = parser.parse_args(argv)
    from diffusers import DDIMScheduler as DiffusersDDIM

    from ddim.kernels import direct_launch

    device = torch.device(args.device)
    cuda = device.type == "cuda" and ddim.kernels.triton_installed()
    if not cuda:
        print("no CUDA (or no Triton): the launch rows need a CUDA device; timing the step rows only")
    shape = (1, 4, 64, 64)
    rows: list[dict[str, Any]] = []
    profiles: dict[str, str] = {}
    for eta in (0.0, 1.0):
        g = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(shape, generator=g, device=device)
        m = torch.randn(shape, generator=g, device=device)
        z = torch.randn(shape, generator=g, device=device) if eta > 0 else None
        for kind in ("int", "tensor"):
            fns: dict[str, Callable[[], object]] = {}
            for name, cls in (("diffusers", DiffusersDDIM), ("ours", ddim.DDIMScheduler)):
                scheduler = cls()
                scheduler.set_timesteps(50, device=device)
                t: Any = scheduler.timesteps[10] if kind == "tensor" else int(scheduler.timesteps[10])
                fns[name] = lambda s=scheduler, t=t, m=m, x=x, eta=eta, z=z: s.step(m, t, x, eta=eta, variance_noise=z)
            ours = fns["ours"]
            if cuda:
                fns["ours_jit"] = switched(ours, direct_launch, False)
            fns["ours_torch"] = switched(ours, ddim.kernels, False)
            if cuda:
                fns.update(launch_rows(ours))
            medians = interleaved_medians(list(fns.values()), device, args.reps, args.budget)
            us = {k: v * 1e6 for k, v in zip(fns, medians, strict=True)}
            row: dict[str, Any] = {"eta": eta, "timestep": kind, **{f"{k}_us": v for k, v in us.items()}}
            row["diffusers_over_ours"] = us["diffusers"] / us["ours"]
            rows.append(row)
            cells = ", ".join(f"{k} {v:.1f}" for k, v in us.items())
            ratio_text = f"diffusers / ours {row['diffusers_over_ours']:.2f}x"
            print(f"eta {eta:.0f}, {kind} timestep (us per call): {cells}; {ratio_text}")
            if cuda:
                fast = us["ours"] <= 20.0
                ratio = row["diffusers_over_ours"] >= 6.0
                print(
                    f"  target: ours <= 20 us: {'met' if fast else 'MISSED'} ({us['ours']:.1f}); "
                    f">= 6x diffusers: {'met' if ratio else 'MISSED'} ({row['diffusers_over_ours']:.2f}x)"
                )
            profiles[f"eta{eta:.0f}-{kind}"] = profile_top(ours, 2000, 14)
    status = "no Triton launch on this device"
    if cuda:
        from ddim.kernels import triton_update

        status = f"direct-launch bindings: {triton_update.launcher().counts()}"
    print(status)
    for key, text in profiles.items():
        print(f"\n== cProfile of our step, {key}, 2000 calls (tottime)\n{text}")
    path = write_json(
        args.out, {"environment": environment(device), "note": status, "rows": rows, "profiles": profiles}
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
