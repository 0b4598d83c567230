"""The cache-chunked CPU update, split across torch's intra-op threads.

A CPU tensor larger than the caches is updated chunk by chunk: every operation of the update runs on
one chunk while it is in cache, so each tensor crosses memory once. The chunks are cut into one
contiguous block per thread (``torch.get_num_threads()``); the calling thread takes the first block and a
small pool of Python threads the others. Torch operations release the GIL, and an operation on a chunk
no larger than torch's parallel grain (32768 elements) runs on the thread that calls it, so each thread
works through its own block and writes (``out=``) disjoint slices of the outputs. Every chunk is computed
by the same operations on the same slices whichever thread takes it: the numbers are bit-equal to those
of one thread.
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

#: Fewest chunks a thread is given. Measured with ``benchmarks/chunk_threads.py`` on a 2-core machine
#: (fp32, 32768-element chunks): a second thread took 0.60-0.75x the time of one from 16 chunks
#: (512K elements) on, 0.9-1.2x at 4 chunks, where starting it costs about what it saves.
MIN_CHUNKS_PER_THREAD = 16


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


def thread_blocks(chunks: int, threads: int) -> list[range]:
    """Contiguous blocks of chunk indices, one per thread used: at most ``threads``, each of at least
    :data:`MIN_CHUNKS_PER_THREAD` chunks (one block when there are fewer), sizes differing by at most one."""
    count = max(1, min(threads, chunks // MIN_CHUNKS_PER_THREAD))
    base, extra = divmod(chunks, count)
    blocks, start = [], 0
    for i in range(count):
        stop = start + base + (i < extra)
        blocks.append(range(start, stop))
        start = stop
    return blocks


class WorkerPool:
    """A lazily grown pool of Python threads for the blocks after the first; re-made in a forked child
    (a parent's threads do not exist there)."""

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

    def run(self, block: range) -> None:
        """Update the chunks of ``block``, in the caller's inference mode, recording no gradients."""
        with torch.inference_mode(self.inference), torch.no_grad():
            for i in block:
                self.run_chunk(i)

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

    The chunks are shared among ``threads`` threads (default ``torch.get_num_threads()``) as
    :func:`thread_blocks` cuts them; the results do not depend on the number of threads.
    """
    if threads is None:
        threads = torch.get_num_threads()
    elif isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ArgumentValueError(f"threads must be a positive int, got {threads!r}")
    if chunk < 1:
        raise ArgumentValueError(f"chunk must be a positive number of elements, got {chunk!r}")
    job = ChunkedUpdate(
        chunk_pass,
        x.split(chunk),
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
    )
    first, *rest = thread_blocks(len(job.xs), threads)
    if not rest:
        job.run(first)
        return
    pending = [WORKERS.get(len(rest)).submit(job.run, block) for block in rest]
    try:
        job.run(first)
    finally:
        concurrent.futures.wait(pending)
    for future in pending:
        future.result()
