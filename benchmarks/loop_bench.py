"""Scheduler share of a 50-step DDIM sampling loop, ours against diffusers', with random-weight UNets.

Models: a DDPM-CIFAR10-size ``diffusers.UNet2DModel`` (35.7M parameters, 32x32x3, batch 64) and a tiny
UNet. Each loop passes the timestep as pipelines do: the element of ``scheduler.timesteps`` (on the
device) to ``step``, and a (batch,) tensor to the model. Timed, interleaved, median of repetitions:

- ``model``: the model calls alone (the same 50 calls, no step);
- ``ours`` / ``diffusers``: model + step;
- ``graph`` (CUDA): the whole loop with our step replayed from one CUDA graph (:mod:`ddim.graphs`);
- ``graph_model`` (CUDA): the model calls alone, replayed from one CUDA graph.

Every row is warmed up (two loops) before timing; the repetitions alternate between the rows, so
each repetition holds one loop of every row run side by side (same clocks, same load); on CUDA the
first case is preceded by ``--warmup-seconds`` of model calls (clocks up). Scheduler share = the
median over repetitions of (loop - model) / loop, paired within a repetition; graphed share =
(graph - graph_model) / graph likewise. The share is printed with its interquartile range over the
repetitions and marked "noise" when that range includes 0: such a share is not a measurement. On
the CPU, "in step" = host time inside ``step`` / loop time, from one more loop (on CUDA host time in
``step`` is launch time, not the step's cost, so it is not reported). On CUDA the model runs in fp16,
on the CPU in fp32; ``--quick`` shrinks the batches (and the CIFAR10 step count) so that it finishes
in minutes on the CPU.

    python benchmarks/loop_bench.py [--quick] [--device cpu|cuda|all] [--out results/loop.json]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

import ddim
from common import captured, devices, environment, interleaved_times, print_table, write_json
from ddim.graphs import GraphedSampler, SamplingPlan, run_steps


def cifar10_unet() -> torch.nn.Module:
    """The DDPM CIFAR10 architecture (Ho et al. 2020) as diffusers builds it (google/ddpm-cifar10-32)."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        layers_per_block=2,
        block_out_channels=(128, 256, 256, 256),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    )


def tiny_unet() -> torch.nn.Module:
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(32, 64),
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )


class Predictor(torch.nn.Module):
    """model(x, t) -> tensor, as ``ddim.sample`` and :mod:`ddim.graphs` call it."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample


class TimedSteps:
    """Proxy of a scheduler that adds the host time spent in ``step`` to ``elapsed``."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.elapsed = 0.0

    def step(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.scheduler.step(*args, **kwargs)
        finally:
            self.elapsed += time.perf_counter() - start


def measure(
    device: torch.device, name: str, unet: torch.nn.Module, batch: int, steps: int, eta: float, reps: int
) -> dict[str, Any]:
    from diffusers import DDIMScheduler as DiffusersDDIM

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    model = Predictor(unet.to(device=device, dtype=dtype).eval())
    shape = (batch, 3, 32, 32)
    x_t = torch.randn(shape, device=device, dtype=dtype)
    loops: dict[str, Any] = {}
    schedulers = {"ours": ddim.DDIMScheduler(), "diffusers": DiffusersDDIM()}
    for key, scheduler in schedulers.items():
        scheduler.set_timesteps(steps, device=device)
        plan = SamplingPlan.build(scheduler, batch, device)
        generator = torch.Generator(device=device).manual_seed(0) if eta > 0 else None
        loops[key] = lambda s=scheduler, p=plan, g=generator: run_steps(model, s, x_t, p, eta, g)
    plan = SamplingPlan.build(schedulers["ours"], batch, device)

    def model_only() -> None:
        for t_batch in plan.model_timesteps:
            model(x_t, t_batch)

    fns = {"model": model_only, **loops}
    if device.type == "cuda":
        generator = torch.Generator(device=device).manual_seed(0) if eta > 0 else None
        graphed = GraphedSampler(
            model, ddim.DDIMScheduler(), shape, num_inference_steps=steps, eta=eta, generator=generator, dtype=dtype
        )
        fns["graph"] = lambda: graphed(x_t)
        fns["graph_model"] = captured(model_only, device)
    with torch.no_grad():
        runs = dict(zip(fns, interleaved_times(list(fns.values()), device, reps, budget_s=0.0, cap=1), strict=True))
    times = {k: statistics.median(v) for k, v in runs.items()}
    row: dict[str, Any] = {"device": device.type, "model": name, "batch": batch, "steps": steps, "eta": eta}
    row.update({f"{k}_s": v for k, v in times.items()})
    pairs = [(key, "model") for key in schedulers] + ([("graph", "graph_model")] if "graph" in runs else [])
    for loop, floor in pairs:
        shares = sorted((a - b) / a for a, b in zip(runs[loop], runs[floor], strict=True))
        low, high = shares[len(shares) // 4], shares[(3 * len(shares)) // 4]
        row[f"{loop}_share"] = statistics.median(shares)
        row[f"{loop}_share_iqr"] = f"{low:.1%}..{high:.1%}" + (" noise" if low <= 0 <= high else "")
    for key, scheduler in schedulers.items():
        if device.type == "cuda":
            continue
        # Direct: host time inside step over one more loop (exact on the CPU; on CUDA it counts launches
        # and the waits of forced syncs, which is where a syncing step spends its time).
        timed = TimedSteps(scheduler)
        generator = torch.Generator(device=device).manual_seed(0) if eta > 0 else None
        with torch.no_grad():
            torch.cuda.synchronize(device) if device.type == "cuda" else None
            start = time.perf_counter()
            run_steps(model, timed, x_t, SamplingPlan.build(scheduler, batch, device), eta, generator)
            torch.cuda.synchronize(device) if device.type == "cuda" else None
        row[f"{key}_in_step"] = timed.elapsed / (time.perf_counter() - start)
    row["graph_s"] = times.get("graph")
    row["graph_model_s"] = times.get("graph_model")
    return row


def warm_up(device: torch.device, seconds: float) -> None:
    """Keep the device busy for ``seconds`` (clocks up before the first timed case)."""
    if seconds <= 0 or device.type != "cuda":
        return
    a = torch.randn(4096, 4096, device=device, dtype=torch.float16)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(20):
            a @ a
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="CPU-sized run: CIFAR10 UNet at batch 1 and 10 steps, tiny UNet at batch 4"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny UNet only, batch 2, 5 steps (checks the script)")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--reps", type=int, default=None, help="interleaved repetitions (default 5; quick 3)")
    parser.add_argument("--max-seconds", type=float, default=float("inf"), help="start no new case after this")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--warmup-seconds", type=float, default=2.0, help="CUDA: busy time before the first case")
    parser.add_argument("--out", default="results/loop.json")
    args = parser.parse_args(argv)
    reps = args.reps or (3 if args.quick else 5)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows = []
    envs = {}
    started = time.perf_counter()
    for device in devices(args.device):
        small = args.quick and device.type == "cpu"
        plans = [
            ("ddpm-cifar10", cifar10_unet, 1 if small else 64, 10 if small else 50),
            ("tiny", tiny_unet, 4 if small else 64, 50),
        ]
        if args.smoke:
            plans = [("tiny", tiny_unet, 2, 5)]
        warm_up(device, args.warmup_seconds)
        for name, build, batch, steps in plans:
            for eta in (0.0, 1.0):
                if time.perf_counter() - started > args.max_seconds:
                    print(f"skipped {name}, batch {batch}, eta {eta:g}: past --max-seconds")
                    continue
                torch.manual_seed(0)
                rows.append(measure(device, name, build(), batch, steps, eta, reps))
                print_table(rows[-1:], COLUMNS)
        envs[device.type] = environment(device)
    print("\nall loops (seconds per loop, medians; share = median of (loop - model) / loop per repetition, IQR;")
    print("'noise': the IQR includes 0; in step (CPU) = host time in step / loop):")
    print_table(rows, COLUMNS)
    path = write_json(args.out, {"environment": envs, "rows": rows})
    print(f"wrote {path}")
    return 0


COLUMNS = [
    ("device", "device", "s"),
    ("model", "model", "s"),
    ("batch", "batch", "d"),
    ("steps", "steps", "d"),
    ("eta", "eta", ".0f"),
    ("model_s", "model only s", ".4f"),
    ("ours_s", "ours s", ".4f"),
    ("diffusers_s", "diffusers s", ".4f"),
    ("graph_s", "ours graphed s", ".4f"),
    ("graph_model_s", "model graphed s", ".4f"),
    ("graph_share", "graphed share", ".2%"),
    ("graph_share_iqr", "(IQR)", "s"),
    ("ours_share", "ours share", ".2%"),
    ("ours_share_iqr", "(IQR)", "s"),
    ("diffusers_share", "diffusers share", ".2%"),
    ("diffusers_share_iqr", "(IQR)", "s"),
    ("ours_in_step", "ours in step", ".2%"),
    ("diffusers_in_step", "diffusers in step", ".2%"),
]


if __name__ == "__main__":
    raise SystemExit(main())
