"""Where chunking pays, where a second thread pays, and what reused output buffers save: one CPU step by size.

For fp32 tensors of 2^15 to 2^24 elements it times ``ddim.DDIMScheduler.step`` (SD config, eta 0, int
timestep) in one process, repetitions interleaved, medians:

- ``unchunked 1t`` / ``unchunked 2t``: whole-tensor operations (each split among the threads by torch itself);
- ``chunked 1t`` / ``chunked 2t``: the chunked path forced at every size (``ddim.update.CPU_CHUNK_THRESHOLD``
  set to 1), each chunk one block of ``ddim.cpu_chunks.BLOCK_BYTES`` per thread;
- ``chunked 2t fresh``: as ``chunked 2t`` with no freed output buffer kept for reuse
  (``ddim.cpu_buffers.MAX_FREE`` set to 0): every output is new memory, faulted in on first touch.

Every call frees its outputs before it returns (a sampling loop frees them a step later).

It sets the module constants only for the measurement; the library's own threshold is printed beside them.

    python benchmarks/chunk_threads.py [--reps 9] [--out results/chunk_threads.json]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch

import ddim
import ddim.cpu_buffers
import ddim.update
from common import CONFIGS, environment, interleaved_medians, print_table, write_json

SIZES = tuple(1 << k for k in range(15, 25))
WAYS = ("unchunked 1t", "unchunked 2t", "chunked 1t", "chunked 2t", "chunked 2t fresh")


def timed_ways(numel: int) -> dict[str, Callable[[], None]]:
    """The ways of stepping one (numel,) fp32 tensor, each setting the thread count and path it needs."""
    scheduler = ddim.DDIMScheduler(**CONFIGS["sd"])
    scheduler.set_timesteps(50)
    t = int(scheduler.timesteps[10])
    g = torch.Generator().manual_seed(0)
    x, m = torch.randn(numel, generator=g), torch.randn(numel, generator=g)
    threshold = ddim.update.CPU_CHUNK_THRESHOLD
    kept = ddim.cpu_buffers.MAX_FREE

    def way(threads: int, chunked: bool, reuse: bool = True) -> Callable[[], None]:
        def call() -> None:
            torch.set_num_threads(threads)
            ddim.update.CPU_CHUNK_THRESHOLD = 1 if chunked else numel + 1
            ddim.cpu_buffers.MAX_FREE = kept if reuse else 0
            try:
                out = scheduler.step(m, t, x)
                del out  # freed inside the call, under this way's free-list setting
            finally:
                ddim.update.CPU_CHUNK_THRESHOLD = threshold
                ddim.cpu_buffers.MAX_FREE = kept

        return call

    ways = [way(1, False), way(2, False), way(1, True), way(2, True), way(2, True, reuse=False)]
    return dict(zip(WAYS, ways, strict=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=9, help="interleaved repetitions")
    parser.add_argument("--budget", type=float, default=0.05, help="seconds per repetition and way")
    parser.add_argument("--out", default="results/chunk_threads.json")
    parser.add_argument("--from-size", type=int, default=SIZES[0], help="smallest size measured (elements)")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    cpu = torch.device("cpu")
    print(
        f"library: chunked from {ddim.update.CPU_CHUNK_THRESHOLD} elements, "
        f"{ddim.cpu_chunks.BLOCK_BYTES} bytes a thread in a chunk"
    )
    rows: list[dict[str, Any]] = []
    for numel in (n for n in SIZES if n >= args.from_size):
        ways = timed_ways(numel)
        medians = interleaved_medians(list(ways.values()), cpu, args.reps, args.budget)
        row: dict[str, Any] = {"elements": numel}
        row.update({name: seconds * 1e6 for name, seconds in zip(ways, medians, strict=True)})
        row["2t / 1t chunked"] = row["chunked 2t"] / row["chunked 1t"]
        row["2t / 1t unchunked"] = row["unchunked 2t"] / row["unchunked 1t"]
        row["chunked / unchunked 2t"] = row["chunked 2t"] / row["unchunked 2t"]
        row["fresh / reused 2t"] = row["chunked 2t fresh"] / row["chunked 2t"]
        rows.append(row)
        print(f"{numel} elements done", flush=True)
    torch.set_num_threads(threads)
    columns = [("elements", "elements", "d")]
    columns += [(name, f"{name} us", ".1f") for name in WAYS]
    ratios = ("2t / 1t chunked", "2t / 1t unchunked", "chunked / unchunked 2t", "fresh / reused 2t")
    columns += [(name, name, ".2f") for name in ratios]
    print_table(rows, columns)
    path = write_json(args.out, {"environment": environment(cpu), "rows": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
