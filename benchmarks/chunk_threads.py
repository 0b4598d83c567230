"""Where a second thread pays in the chunked CPU update, and where chunking pays at all: one CPU step by size.

For tensors of 2 to 512 chunks (``ddim.update.CPU_CHUNK`` = 32768 elements each; fp32, SD config, eta 0,
int timestep) it times ``ddim.DDIMScheduler.step`` four ways in one process, repetitions interleaved, medians:

- ``eager 1t`` / ``eager 2t``: the unchunked path (whole-tensor operations, each split by torch itself);
- ``chunked 1t`` / ``chunked 2t``: the chunked path forced at every size, on one thread and on two threads
  with no lower limit on chunks per thread (``ddim.cpu_chunks.MIN_CHUNKS_PER_THREAD`` set to 1).

It sets the two module constants only for the measurement; the library's own choice is printed beside them.

    OMP_NUM_THREADS=2 python benchmarks/chunk_threads.py [--reps 9] [--out results/chunk_threads.json]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch

import ddim
import ddim.cpu_chunks
import ddim.update
from common import CONFIGS, environment, interleaved_medians, print_table, write_json

CHUNKS = (2, 4, 8, 16, 32, 64, 128, 512)


def timed_ways(numel: int) -> dict[str, Callable[[], object]]:
    """The four ways of stepping one (numel,) fp32 tensor, each setting the thread count and path it needs."""
    scheduler = ddim.DDIMScheduler(**CONFIGS["sd"])
    scheduler.set_timesteps(50)
    t = int(scheduler.timesteps[10])
    g = torch.Generator().manual_seed(0)
    x, m = torch.randn(numel, generator=g), torch.randn(numel, generator=g)
    chunked_from = ddim.update.CPU_CHUNK_THRESHOLD
    min_per_thread = ddim.cpu_chunks.MIN_CHUNKS_PER_THREAD

    def way(threads: int, chunked: bool) -> Callable[[], object]:
        def call() -> object:
            torch.set_num_threads(threads)
            ddim.update.CPU_CHUNK_THRESHOLD = 1 if chunked else numel + 1
            ddim.cpu_chunks.MIN_CHUNKS_PER_THREAD = 1
            try:
                return scheduler.step(m, t, x)
            finally:
                ddim.update.CPU_CHUNK_THRESHOLD = chunked_from
                ddim.cpu_chunks.MIN_CHUNKS_PER_THREAD = min_per_thread

        return call

    return {
        "eager 1t": way(1, False),
        "eager 2t": way(2, False),
        "chunked 1t": way(1, True),
        "chunked 2t": way(2, True),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=9, help="interleaved repetitions")
    parser.add_argument("--budget", type=float, default=0.05, help="seconds per repetition and way")
    parser.add_argument("--out", default="results/chunk_threads.json")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    cpu = torch.device("cpu")
    print(
        f"library: chunked from {ddim.update.CPU_CHUNK_THRESHOLD} elements, "
        f"a thread takes at least {ddim.cpu_chunks.MIN_CHUNKS_PER_THREAD} chunks"
    )
    rows: list[dict[str, Any]] = []
    for chunks in CHUNKS:
        numel = chunks * ddim.update.CPU_CHUNK
        ways = timed_ways(numel)
        medians = interleaved_medians(list(ways.values()), cpu, args.reps, args.budget)
        row: dict[str, Any] = {"chunks": chunks, "elements": numel}
        row.update({name: seconds * 1e6 for name, seconds in zip(ways, medians, strict=True)})
        row["2t / 1t chunked"] = row["chunked 2t"] / row["chunked 1t"]
        row["chunked 2t / eager 2t"] = row["chunked 2t"] / row["eager 2t"]
        rows.append(row)
        print(f"{chunks} chunks done", flush=True)
    torch.set_num_threads(threads)
    columns = [("chunks", "chunks", "d"), ("elements", "elements", "d")]
    columns += [(name, f"{name} us", ".1f") for name in ("eager 1t", "eager 2t", "chunked 1t", "chunked 2t")]
    columns += [(name, name, ".2f") for name in ("2t / 1t chunked", "chunked 2t / eager 2t")]
    print_table(rows, columns)
    path = write_json(args.out, {"environment": environment(cpu), "rows": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
