"""The cache-chunked CPU update, split across torch's intra-op threads.

A CPU tensor larger than the caches is updated chunk by chunk: every operation of the update runs on
one chunk while it is in cache, so each tensor crosses memory once. Up to ``torch.get_num_threads()``
threads (the caller and a small pool of Python threads) take runs of :data:`RUN_CHUNKS` consecutive chunks
from a shared counter until none are left, so a thread slowed by other work on its core takes fewer runs
instead of holding the step up. Torch operations release the GIL, and an operation on a chunk no larger
than torch's parallel grain (32768 elements) runs on the thread that calls it, so the threads work side by
side, each writing (``out=``) its own slices of the outputs. Every chunk is computed by the same operations
on the same slices whichever thread takes it: the numbers are bit-equal to those of one thread.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from ddim.coefficients import UpdateTerms
from ddim.thresholding import X0Transform
from ddim.validation import ArgumentValueError

#: Fewest chunks per thread: a step of n chunks uses at most n // 8 threads. Measured with
#: ``benchmarks/chunk_threads.py`` (fp32, 32768-element chunks, 2 threads against 1, two runs on the shared
#: 2-core machine at load 4-6 and 15): 1.3-1.4x the time at 1 chunk per thread, 0.84-1.03x at 2, 0.60-0.77x at
#: 4, 0.32-0.68x at 8 and more; so a thread pays from about 4 chunks, and 8 leaves a margin.
MIN_CHUNKS_PER_THREAD = 8
#: Chunks a thread takes at a time: 8 x 32768 elements, a few hundred microseconds of work (one run per
#: thread at the fewest chunks per thread).
RUN_CHUNKS = 8


class ChunkPass(Protocol):
    """The update of one chunk, writing the first operation of each result into ``x0_out``/``prev_out``."""

    def __call__(
        self,
        x: torch.Tensor,
        m: torch.Tensor,
        z: torch.Tensor | None,
        c: Sequence[float | torch.Tensor],
        terms: UpdateTerms,
        transform: X0Transform,
        x0_out: torch.Tensor | None = None,
        prev_out: torch.Tensor | None = None,
        factors: Sequence[float | torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


def threads_for(chunks: int, threads: int) -> int:
    """Threads that share ``chunks`` chunks: at most ``threads``, and one per :data:`MIN_CHUNKS_PER_THREAD`
    chunks (at least one)."""
    return max(1, min(threads, chunks // MIN_CHUNKS_PER_THREAD))


class ChunkRuns:
    """Runs of :data:`RUN_CHUNKS` consecutive chunk indices handed out in order, each once, to any thread."""

    def __init__(self, chunks: int) -> None:
        self.chunks = chunks
        self.next = 0
        self.lock = threading.Lock()

    def take(self) -> range | None:
        """The next run, or ``None`` when every chunk has been handed out."""
        with self.lock:
            start = self.next
            self.next = min(start + RUN_CHUNKS, self.chunks)
        return range(start, self.next) if start < self.chunks else None

    def stop(self) -> None:
        """Hand out nothing more (a chunk failed)."""
        with self.lock:
            self.next = self.chunks


class WorkerPool:
    """A lazily grown pool of Python threads that help the caller; re-made in a forked child (a parent's
    threads do not exist there)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.size = 0
        self.pid = 0

    def get(self, workers: int) -> concurrent.futures.ThreadPoolExecutor:
        """An executor with room for ``workers`` threads."""
        with self.lock:
            if self.executor is None or self.size < workers or self.pid != os.getpid():
                if self.executor is not None and self.pid == os.getpid():
                    self.executor.shutdown(wait=False)
                self.executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="ddim-chunks")
                self.size, self.pid = workers, os.getpid()
            return self.executor


WORKERS = WorkerPool()


@dataclass(frozen=True)
class ChunkedUpdate:
    """One chunked update: the chunk views of inputs and outputs and what every chunk's pass needs."""

    chunk_pass: ChunkPass
    xs: Sequence[torch.Tensor]
    ms: Sequence[torch.Tensor]
    zs: Sequence[torch.Tensor] | None
    prevs: Sequence[torch.Tensor]
    x0s: Sequence[torch.Tensor]
    c: Sequence[float | torch.Tensor]
    terms: UpdateTerms
    transform: X0Transform
    factors: Sequence[float | torch.Tensor] | None
    work: torch.dtype
    inference: bool
    runs: ChunkRuns

    def run(self) -> None:
        """Update runs of chunks until none are left, in the caller's inference mode, recording no gradients."""
        try:
            with torch.inference_mode(self.inference), torch.no_grad():
                while (run := self.runs.take()) is not None:
                    for i in run:
                        self.run_chunk(i)
        except BaseException:
            self.runs.stop()
            raise

    def run_chunk(self, i: int) -> None:
        x, m = self.xs[i], self.ms[i]
        z = self.zs[i] if self.zs is not None else None
        if x.dtype == m.dtype == self.work:
            self.chunk_pass(x, m, z, self.c, self.terms, self.transform, self.x0s[i], self.prevs[i], self.factors)
            return
        prev, x0 = self.chunk_pass(
            x.to(self.work), m.to(self.work), z, self.c, self.terms, self.transform, factors=self.factors
        )
        self.prevs[i].copy_(prev)
        self.x0s[i].copy_(x0)


def update_in_chunks(
    chunk_pass: ChunkPass,
    x: torch.Tensor,
    m: torch.Tensor,
    z: torch.Tensor | None,
    c: Sequence[float | torch.Tensor],
    terms: UpdateTerms,
    transform: X0Transform,
    factors: Sequence[float | torch.Tensor] | None,
    prev_out: torch.Tensor,
    x0_out: torch.Tensor,
    *,
    work: torch.dtype,
    chunk: int,
    threads: int | None = None,
) -> None:
    """``chunk_pass`` over the flat CPU tensors x, m (and z) in chunks of ``chunk`` elements, into the flat
    ``prev_out`` and ``x0_out``, computed in ``work`` (inputs of another dtype are cast chunk by chunk).

    The chunks are shared among as many threads as :func:`threads_for` allows of ``threads`` (default
    ``torch.get_num_threads()``); the results do not depend on the number of threads.
    """
    if threads is None:
        threads = torch.get_num_threads()
    elif isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ArgumentValueError(f"threads must be a positive int, got {threads!r}")
    if chunk < 1:
        raise ArgumentValueError(f"chunk must be a positive number of elements, got {chunk!r}")
    xs = x.split(chunk)
    job = ChunkedUpdate(
        chunk_pass,
        xs,
        m.split(chunk),
        z.split(chunk) if z is not None else None,
        prev_out.split(chunk),
        x0_out.split(chunk),
        c,
        terms,
        transform,
        factors,
        work,
        torch.is_inference_mode_enabled(),
        ChunkRuns(len(xs)),
    )
    helpers = threads_for(len(xs), threads) - 1
    if helpers == 0:
        job.run()
        return
    pending = [WORKERS.get(helpers).submit(job.run) for _ in range(helpers)]
    try:
        job.run()
    finally:
        concurrent.futures.wait(pending)
    for future in pending:
        future.result()
