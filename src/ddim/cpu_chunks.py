"""The cache-chunked CPU update, every chunk's operations shared by torch's intra-op threads.

A CPU tensor larger than the caches is updated chunk by chunk: every operation of the update runs on one
chunk while it is in cache, so each tensor crosses memory once. A chunk holds :data:`BLOCK_BYTES` of the
compute dtype per intra-op thread (``torch.get_num_threads()``), so torch splits each operation of a chunk
into one block per thread (at least its parallel grain of 32768 elements each), the same split for every
operation of the chunk: a thread's block stays in its core's cache from one operation to the next. The
operations are elementwise, and the vectorized and scalar loops of torch's CPU kernels round alike, so the
numbers do not depend on the chunk size or the number of threads (tested bit for bit).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from ddim.coefficients import UpdateTerms
from ddim.thresholding import X0Transform
from ddim.validation import ArgumentValueError

#: Bytes of the compute dtype per thread in a chunk: 1 MiB (262144 float32 elements). Measured with
#: ``benchmarks/chunk_threads.py`` (see docs/performance.md, section "Threads").
BLOCK_BYTES = 1 << 20


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


def chunk_elements(threads: int, dtype: torch.dtype) -> int:
    """Elements per chunk for ``threads`` intra-op threads computing in ``dtype``: one block of
    :data:`BLOCK_BYTES` per thread."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ArgumentValueError(f"threads must be a positive int, got {threads!r}")
    return threads * max(1, BLOCK_BYTES // dtype.itemsize)


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
    chunk: int | None = None,
) -> None:
    """``chunk_pass`` over the flat CPU tensors x, m (and z) in chunks of ``chunk`` elements (default
    :func:`chunk_elements` for torch's thread count), into the flat ``prev_out`` and ``x0_out``, computed in
    ``work`` (inputs of another dtype are cast chunk by chunk)."""
    if chunk is None:
        chunk = chunk_elements(torch.get_num_threads(), work)
    elif isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ArgumentValueError(f"chunk must be a positive number of elements, got {chunk!r}")
    xs = x.split(chunk)
    zs = z.split(chunk) if z is not None else (None,) * len(xs)
    for xi, mi, zi, prev, x0 in zip(xs, m.split(chunk), zs, prev_out.split(chunk), x0_out.split(chunk), strict=True):
        if xi.dtype == mi.dtype == work:
            chunk_pass(xi, mi, zi, c, terms, transform, x0, prev, factors)
            continue
        prev_work, x0_work = chunk_pass(xi.to(work), mi.to(work), zi, c, terms, transform, factors=factors)
        prev.copy_(prev_work)
        x0.copy_(x0_work)
