"""Peak memory (max RSS) of `ddim eval --from-shards DIR` against N, and of loading the merged samples.

Writes shard directories with feature statistics for each N (``--counts``), then runs, each in a fresh
process, `ddim eval --from-shards DIR` and, for contrast, `ddim.app.shards.load_samples(DIR)` (what FID
on the merged samples starts with), and prints each one's peak RSS. The shards come from a stand-in
conditional model (``0.9 x``, 1 step): what is measured is reading statistics, not sampling.

    python benchmarks/eval_from_shards_memory.py --counts 5000 50000
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ddim import DDIMScheduler
from ddim.app.digits.conditional import NULL_LABEL, NUM_LABELS
from ddim.app.digits.fid_statistics import DigitsFeatures
from ddim.app.shards import generate_shards
from ddim.app.shards.conditioning import Conditioning

PEAK = "import resource, sys; {body}; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)"
COMMANDS = {
    "eval --from-shards": "from ddim.app.cli import main; main(['eval', '--from-shards', sys.argv[1]])",
    "load_samples (merged)": "from ddim.app.shards import load_samples; load_samples(sys.argv[1])",
}


def stand_in(x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return 0.9 * x


def peak_mib(body: str, out: Path) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-c", PEAK.format(body=body), str(out)], capture_output=True, text=True, check=True
    )
    lines = done.stdout.strip().splitlines()
    return int(lines[-1]), lines[0] if len(lines) > 1 else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[5000, 50000])
    parser.add_argument("--shard-size", type=int, default=1024)
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="fid-memory-"))
    features = DigitsFeatures()
    conditioning = Conditioning(tuple(range(10)), "uniform", NUM_LABELS, NULL_LABEL, 1.5, 0.0)
    try:
        for count in args.counts:
            out = root / f"n{count}"
            started = time.perf_counter()
            generate_shards(
                stand_in,
                DDIMScheduler(clip_sample=False),
                out,
                count,
                (1, 8, 8),
                num_inference_steps=1,
                batch_size=args.shard_size,
                micro_batch=64,
                shard_size=args.shard_size,
                progress=False,
                log=None,
                conditioning=conditioning,
                fid_features=features,
            )
            written = time.perf_counter() - started
            size = sum(p.stat().st_size for p in out.iterdir()) / 2**20
            for name, body in COMMANDS.items():
                mib, first = peak_mib(body, out)
                print(
                    f"N={count:>7} ({size:7.1f} MiB of shards, written in {written:5.1f} s)  {name:24s} "
                    f"peak RSS {mib:5d} MiB  {first}"
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
