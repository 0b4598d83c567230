"""What ``ddim.sample`` costs beyond its steps, and ``set_timesteps`` with an unchanged grid, on the CPU.

One process, one thread, interleaved repetitions (medians): ``ddim.sample`` (10 steps, 1x4x64x64, a
trivial model) against a hand loop over our ``step`` and one over diffusers'; ``set_timesteps(10)``
called again with the same arguments, ours against diffusers'. Targets: ``ddim.sample`` within 1.15x
of the hand loop over our step and faster than the hand loop over diffusers'; ``set_timesteps`` within
2x of diffusers'.

    python benchmarks/sample_overhead.py [--reps 9] [--steps 10]
"""

from __future__ import annotations

import argparse

import diffusers
import torch

import ddim
from common import interleaved_medians

SHAPE = (1, 4, 64, 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    ours = ddim.DDIMScheduler(clip_sample=False)
    theirs = diffusers.DDIMScheduler(clip_sample=False)
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    output = torch.zeros(SHAPE)

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return output

    def hand_loop(scheduler: object) -> torch.Tensor:
        scheduler.set_timesteps(args.steps)  # type: ignore[attr-defined]
        x = x_T
        for t in scheduler.timesteps:  # type: ignore[attr-defined]
            x = scheduler.step(model(x, t), t, x).prev_sample  # type: ignore[attr-defined]
        return x

    calls = {
        "ddim.sample": lambda: ddim.sample(model, ours, noise=x_T, num_inference_steps=args.steps),
        "hand loop, our step": lambda: hand_loop(ours),
        "hand loop, diffusers' step": lambda: hand_loop(theirs),
        "set_timesteps, ours": lambda: ours.set_timesteps(args.steps),
        "set_timesteps, diffusers'": lambda: theirs.set_timesteps(args.steps),
    }
    seconds = dict(zip(calls, interleaved_medians(list(calls.values()), cpu, args.reps, budget_s=0.05), strict=True))
    print(f"CPU, 1 thread, {SHAPE}, {args.steps} steps, trivial model; medians of {args.reps} interleaved repetitions")
    for name, t in seconds.items():
        print(f"| {name} | {t * 1e6:.1f} us |")
    loop = seconds["ddim.sample"] / seconds["hand loop, our step"]
    faster = seconds["ddim.sample"] / seconds["hand loop, diffusers' step"]
    setting = seconds["set_timesteps, ours"] / seconds["set_timesteps, diffusers'"]
    print(
        f"target: ddim.sample <= 1.15x the hand loop over our step: {loop:.2f}x ({'met' if loop <= 1.15 else 'MISSED'})"
    )
    verdict = "met" if faster < 1 else "MISSED"
    print(f"target: ddim.sample faster than the hand loop over diffusers': {faster:.2f}x ({verdict})")
    print(f"target: set_timesteps <= 2x diffusers': {setting:.2f}x ({'met' if setting <= 2 else 'MISSED'})")


if __name__ == "__main__":
    main()
