"""Latency of one action chunk of a Diffusion-Policy-sized 1-D UNet policy: diffusers' loop, ours, graphed.

The network is :class:`policy_unet.ConditionalUnet1D` (channels 256/512/1024, GroupNorm + Mish, FiLM
on a 128-dim observation feature and a sinusoidal time embedding; horizon 16, action dim 7, random
weights); the scheduler config is Diffusion Policy's: T = 100, ``squaredcos_cap_v2``,
``clip_sample=True``, epsilon prediction. Rows, per (batch, steps, eta), timed in one process with
repetitions interleaved across rows (each row warmed up first; medians, a device sync per chunk):

- ``model eager``: the model alone, ``steps`` calls (the floor of any eager loop);
- ``model graphed``: the same calls replayed from one CUDA graph;
- ``diffusers eager``: Diffusion Policy's loop, ``scheduler.step(model(x, t, obs), t, x)`` with
  diffusers' ``DDIMScheduler`` and the CPU timesteps of ``set_timesteps``;
- ``ours eager``: the same loop with ``ddim.DDIMScheduler`` (the drop-in);
- ``ours graphed``: ``ddim.graphs.GraphedSampler`` with the observation as a per-call input;
- ``ours graphed, kernel noise`` (eta > 0): the same with ``scheduler.noise_source = "kernel"``.

Prints ms per chunk, the ratios to diffusers' eager loop, and the largest action difference between
ours and diffusers (eta 0) and between graphed and eager. ``--quick``: batch 1, 10 steps, and on the
CPU a narrower network (channels 64/128/256, stated in the output).

    python benchmarks/policy_latency.py [--device cuda|cpu] [--quick] [--out results/policy_latency.json]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch

import ddim
from common import captured, environment, interleaved_medians, print_table, write_json
from ddim.graphs import GraphedSampler, SamplingPlan
from policy_unet import ConditionalUnet1D

CONFIG: dict[str, Any] = {
    "num_train_timesteps": 100,
    "beta_schedule": "squaredcos_cap_v2",
    "clip_sample": True,
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "prediction_type": "epsilon",
}
HORIZON, ACTION_DIM, OBS_DIM = 16, 7, 128


def case(model: torch.nn.Module, device: torch.device, batch: int, steps: int, eta: float) -> tuple[dict, dict]:
    """The timed functions of one case and the action differences (ours vs diffusers, graphed vs eager)."""
    from diffusers import DDIMScheduler as DiffusersDDIM

    g = torch.Generator(device=device).manual_seed(0)
    x_T = torch.randn(batch, HORIZON, ACTION_DIM, generator=g, device=device)
    obs = torch.randn(batch, OBS_DIM, generator=g, device=device)
    generator = torch.Generator(device=device).manual_seed(1)

    def eager(scheduler: Any) -> Callable[[], torch.Tensor]:
        scheduler.set_timesteps(steps)  # CPU timesteps, as Diffusion Policy sets them

        def chunk() -> torch.Tensor:
            x = x_T
            for t in scheduler.timesteps:
                x = scheduler.step(model(x, t, obs), t, x, eta=eta, generator=generator).prev_sample
            return x

        return chunk

    def model_only() -> None:
        for t in timesteps:
            model(x_T, t, obs)

    diffusers_chunk, ours_chunk = eager(DiffusersDDIM(**CONFIG)), eager(ddim.DDIMScheduler(**CONFIG))
    reference = ddim.DDIMScheduler(**CONFIG)
    reference.set_timesteps(steps)
    timesteps = reference.timesteps
    fns: dict[str, Callable[[], object]] = {
        "model eager": model_only,
        "diffusers eager": diffusers_chunk,
        "ours eager": ours_chunk,
    }
    diffs: dict[str, float] = {}
    if eta == 0:
        diffs["ours vs diffusers"] = float((ours_chunk() - diffusers_chunk()).abs().max())
    if device.type == "cuda":
        plan = SamplingPlan.build(reference, batch, device)
        fns["model graphed"] = captured(lambda: [model(x_T, t, obs) for t in plan.model_timesteps], device)
        variants = [("ours graphed", "torch")] + ([("ours graphed, kernel noise", "kernel")] if eta > 0 else [])
        for name, source in variants:
            scheduler = ddim.DDIMScheduler(**CONFIG)
            scheduler.noise_source = source
            sampler = GraphedSampler(
                model,
                scheduler,
                x_T.shape,
                extra_inputs={"global_cond": obs},
                num_inference_steps=steps,
                eta=eta,
                generator=torch.Generator(device=device).manual_seed(2),  # its own: registered with this graph
                device=device,
            )
            fns[name] = lambda sampler=sampler: sampler(x_T, global_cond=obs)
            if eta == 0:
                diffs[f"{name} vs ours eager"] = float((sampler(x_T, global_cond=obs) - ours_chunk()).abs().max())
    return fns, diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="batch 1, 10 steps (narrower network on the CPU)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--etas", type=float, nargs="+", default=[0.0, 1.0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--budget", type=float, default=0.05, help="seconds per repetition and row")
    parser.add_argument("--max-seconds", type=float, default=float("inf"), help="start no new case after this")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: the robot-side setting)")
    parser.add_argument("--out", default="results/policy_latency.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    channels = (256, 512, 1024)
    if args.quick:
        args.batches, args.steps = [1], [10]
        if device.type == "cpu":
            channels = (64, 128, 256)
    torch.manual_seed(0)
    model = ConditionalUnet1D(ACTION_DIM, OBS_DIM, channels).to(device).eval()
    params = sum(p.numel() for p in model.parameters())
    print(f"{device}: 1-D UNet, channels {channels}, {params / 1e6:.1f}M parameters; T = 100, squaredcos_cap_v2, clip")
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with torch.no_grad():
        for steps in args.steps:
            for batch in args.batches:
                for eta in args.etas:
                    if time.perf_counter() - start > args.max_seconds:
                        print(f"skipped batch {batch}, {steps} steps, eta {eta:g}: past --max-seconds")
                        continue
                    fns, diffs = case(model, device, batch, steps, eta)
                    medians = interleaved_medians(list(fns.values()), device, args.reps, args.budget, cap=50)
                    ms = dict(zip(fns, (m * 1e3 for m in medians), strict=True))
                    base = ms["diffusers eager"]
                    row = {"batch": batch, "steps": steps, "eta": eta, "ms": ms, "diffs": diffs}
                    row["over diffusers"] = {name: value / base for name, value in ms.items()}
                    rows.append(row)
                    print_table(
                        [{"row": name, "ms": value, "ratio": value / base} for name, value in ms.items()],
                        [
                            ("row", f"batch {batch}, {steps} steps, eta {eta:g}", "s"),
                            ("ms", "ms per chunk", ".2f"),
                            ("ratio", "/ diffusers eager", ".3f"),
                        ],
                    )
                    for name, value in diffs.items():
                        print(f"  largest action difference, {name}: {value:.2e}")
    graphed = [r for r in rows if r["steps"] == 10 and "ours graphed" in r["ms"]]
    for r in graphed:
        ratio = r["over diffusers"]["ours graphed"]
        verdict = "met" if ratio <= 0.25 else "MISSED"
        print(
            f"target (10 steps, batch {r['batch']}, eta {r['eta']:g}): graphed <= 1/4 of diffusers' eager: "
            f"{ratio:.3f} ({verdict})"
        )
    path = write_json(args.out, {"environment": environment(device), "channels": channels, "rows": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
