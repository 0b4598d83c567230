"""Throughput of class-conditional sharded generation against the unconditional job, one process, one thread.

Same N, steps, micro-batch and shard size; each job runs ``--reps`` times, alternating, into fresh folders, and
the median samples/s (one rank) is printed with its ratio to the unconditional job. The conditional job uses the
embedded conditional model with guidance (two model calls a step: the digit and the null label) and without
(s = 1, one call). The CPU load average is printed beside the figures (the machine may be shared).

    python benchmarks/conditional_shards_bench.py --num-samples 256 --steps 20
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ddim.app.digits import load_pretrained
from ddim.app.digits.conditional import NULL_LABEL, NUM_LABELS
from ddim.app.shards import generate_shards
from ddim.app.shards.conditioning import Conditioning


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    plain, plain_scheduler = load_pretrained()
    conditional, conditional_scheduler = load_pretrained(conditional=True)
    digits = tuple(range(10))
    jobs = {
        "unconditional": (plain, plain_scheduler, None),
        "conditional s=1.5 phi=0.7": (
            conditional,
            conditional_scheduler,
            Conditioning(digits, "uniform", NUM_LABELS, NULL_LABEL, 1.5, 0.7),
        ),
        "conditional s=1 (no null pass)": (
            conditional,
            conditional_scheduler,
            Conditioning(digits, "uniform", NUM_LABELS, NULL_LABEL, 1.0, 0.0),
        ),
    }
    rates: dict[str, list[float]] = {name: [] for name in jobs}
    root = Path(tempfile.mkdtemp(prefix="cond-bench-"))
    try:
        for rep in range(args.reps):
            for name, (model, scheduler, conditioning) in jobs.items():
                out = root / f"{rep}-{len(rates[name])}-{name.split()[0]}"
                started = time.perf_counter()
                generate_shards(
                    model,
                    scheduler,
                    out,
                    args.num_samples,
                    (1, 8, 8),
                    seed=0,
                    num_inference_steps=args.steps,
                    batch_size=64,
                    micro_batch=64,
                    shard_size=64,
                    progress=False,
                    log=None,
                    conditioning=conditioning,
                )
                rates[name].append(args.num_samples / (time.perf_counter() - started))
                shutil.rmtree(out)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base = statistics.median(rates["unconditional"])
    print(
        f"N={args.num_samples}, {args.steps} steps, 1 process, 1 thread, median of {args.reps}; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:32s} {median:8.1f} samples/s per rank   ratio to unconditional {median / base:.2f}")


if __name__ == "__main__":
    main()
