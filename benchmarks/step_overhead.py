"""Where the time of one small DDIM step goes: host overhead of our step against its parts and diffusers'.

At small shapes a step costs what the host spends issuing it, not what the device spends running it.
This script times, interleaved in one process (medians, a device sync after each repetition):

- ``diffusers``: diffusers' ``DDIMScheduler.step``;
- ``ours``: our step (the fused Triton kernel on CUDA);
- ``ours_torch``: our step on the pure-torch path (``ddim.kernels.ENABLED = False``);
- ``launch``: the Triton kernel launched alone through ``kernel[grid](...)`` with prepared arguments;
- ``direct``: the same compiled kernel launched through the handle that launch returned (skips
  Triton's argument binding and specialisation; checked to write the same numbers first);
- ``alloc``: the step's two output allocations (``torch.empty_like`` twice).

and prints the top functions of a cProfile of our step. Default config, 1x4x64x64, eta 0 and 1,
int and device timestep.

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


def triton_launches(
    x: torch.Tensor, m: torch.Tensor, z: torch.Tensor | None
) -> tuple[Callable[[], object], Callable[[], object] | None, str]:
    """(launch through ``kernel[grid]``, launch through the returned compiled handle or None, note)."""
    import triton

    from ddim.kernels import triton_update as tu

    prev, x0 = torch.empty_like(x), torch.empty_like(x)
    n = x.numel()
    grid = (triton.cdiv(n, tu.BLOCK), 1)
    runtime = [x, m, z if z is not None else x, prev, x0, x, x, x, 0.9, 0.1, 0.8, 0.2, 0.05, 0.0, 1.0, n, 0, 0, 0]
    constexprs = {"COEF_SOURCE": tu.FROM_ARGS, "X0_MODE": tu.X0_CLIP, "HAS_NOISE": z is not None, "BLOCK": tu.BLOCK}
    jitted = tu.kernel()

    def launch() -> object:
        return jitted[grid](*runtime, **constexprs, num_warps=tu.NUM_WARPS)

    handle = launch()
    torch.cuda.synchronize()
    expected = (prev.clone(), x0.clone())
    attempts = {
        "all arguments": [*runtime, *constexprs.values()],
        "runtime arguments": runtime,
    }
    for name, args in attempts.items():
        try:
            prev.zero_()
            x0.zero_()
            handle[grid](*args)
            torch.cuda.synchronize()
        except Exception as error:
            note = f"direct launch with {name} failed: {type(error).__name__}: {error}"
            continue
        if torch.equal(prev, expected[0]) and torch.equal(x0, expected[1]):
            return launch, (lambda a=args: handle[grid](*a)), f"direct launch takes {name}"
        note = f"direct launch with {name} ran but wrote other numbers"
    return launch, None, note


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

    device = torch.device(args.device)
    shape = (1, 4, 64, 64)
    rows: list[dict[str, Any]] = []
    profiles: dict[str, str] = {}
    note = "no Triton launch on this device"
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

            def ours_torch(ours: Callable[[], object] = ours) -> object:
                ddim.kernels.ENABLED = False
                try:
                    return ours()
                finally:
                    ddim.kernels.ENABLED = True

            fns["ours_torch"] = ours_torch
            if device.type == "cuda" and ddim.kernels.triton_installed():
                launch, direct, note = triton_launches(x, m, z)
                fns["launch"] = launch
                if direct is not None:
                    fns["direct"] = direct
            fns["alloc"] = lambda x=x: (torch.empty_like(x), torch.empty_like(x))
            medians = interleaved_medians(list(fns.values()), device, args.reps, args.budget)
            row: dict[str, Any] = {"eta": eta, "timestep": kind}
            row.update({f"{k}_us": v * 1e6 for k, v in zip(fns, medians, strict=True)})
            rows.append(row)
            cells = ", ".join(f"{k} {v * 1e6:.1f}" for k, v in zip(fns, medians, strict=True))
            print(f"eta {eta:.0f}, {kind} timestep (us per call): {cells}", flush=True)
            profiles[f"eta{eta:.0f}-{kind}"] = profile_top(ours, 2000, 14)
    print(note)
    for key, text in profiles.items():
        print(f"\n== cProfile of our step, {key}, 2000 calls (tottime)\n{text}")
    path = write_json(args.out, {"environment": environment(device), "note": note, "rows": rows, "profiles": profiles})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
