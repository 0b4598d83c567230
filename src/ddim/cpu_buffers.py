"""Large CPU output buffers that are reused once freed, so writing a step's outputs costs no page faults.

A fresh large CPU tensor is memory the kernel maps, and zeroes, on first touch: filling a new 64 MiB output
costs about as long as the arithmetic written into it (16k faults of 4 KiB, or 32 of 2 MiB that each zero
2 MiB). So the step's large outputs come from private anonymous mappings, advised to use transparent huge
pages (Linux), and a mapping whose tensor (with every view of it) has been freed goes on a short free list:
the next output of the same size reuses its pages, already mapped. At most :data:`MAX_FREE` mappings
(:data:`MAX_FREE_BYTES` in all) wait there; :func:`release_cpu_buffers` returns them to the system. A
buffer is reused only when nothing refers to it any more: the tensor's storage owns the one NumPy array
made over the mapping, and the mapping goes back when that array is freed. Where private mappings are not
available (not POSIX), the buffer is a plain ``torch.empty``.

The tensors are ordinary CPU tensors, except that their storage cannot be resized (``Tensor.resize_`` to a
larger size raises), as for any tensor made by ``torch.from_numpy``.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import threading
import weakref

import numpy as np
import torch

#: Buffers from this size on come from (and return to) the free list.
MIN_BYTES = 4 << 20
#: Most freed buffers kept: the outputs of the two steps before the current one (x_prev and x0 each).
MAX_FREE = 4
#: Most bytes kept in freed buffers.
MAX_FREE_BYTES = 1 << 30
#: Whether this platform makes private anonymous mappings (POSIX).
MAPPINGS = os.name == "posix" and hasattr(mmap, "MAP_PRIVATE") and hasattr(mmap, "MAP_ANONYMOUS")


class FreeBuffers:
    """Freed mappings by size, at most :data:`MAX_FREE` of them and :data:`MAX_FREE_BYTES` in all.

    Its lock is re-entrant: a mapping can come back from a finalizer that the garbage collector runs while
    this thread is inside the list."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.by_size: dict[int, list[mmap.mmap]] = {}
        self.count = 0
        self.nbytes = 0

    def take(self, nbytes: int) -> mmap.mmap | None:
        """A freed mapping of ``nbytes`` bytes, or ``None``."""
        with self.lock:
            waiting = self.by_size.get(nbytes)
            if not waiting:
                return None
            self.count -= 1
            self.nbytes -= nbytes
            return waiting.pop()

    def give(self, buffer: mmap.mmap) -> None:
        """Keep a mapping nothing refers to for reuse, if there is room (otherwise it is unmapped when dropped)."""
        size = len(buffer)
        with self.lock:
            if self.count < MAX_FREE and self.nbytes + size <= MAX_FREE_BYTES:
                self.by_size.setdefault(size, []).append(buffer)
                self.count += 1
                self.nbytes += size

    def clear(self) -> int:
        """Drop every kept mapping; returns the bytes released."""
        with self.lock:
            released = self.nbytes
            self.by_size, self.count, self.nbytes = {}, 0, 0
        return released

    def reset_after_fork(self) -> None:
        """A new lock in a forked child (another thread may have held the parent's at the fork)."""
        self.lock = threading.RLock()


FREE = FreeBuffers()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=FREE.reset_after_fork)


def release_cpu_buffers() -> int:
    """Return the freed output buffers kept for reuse to the system; returns how many bytes that was."""
    return FREE.clear()


def new_mapping(nbytes: int) -> mmap.mmap:
    """A private anonymous mapping of ``nbytes`` bytes, advised to use huge pages where the system has them."""
    buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        with contextlib.suppress(OSError):  # huge pages unsupported here: an ordinary mapping
            buffer.madvise(mmap.MADV_HUGEPAGE)
    return buffer


def empty_cpu(shape: torch.Size | tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialized CPU tensor, like ``torch.empty(shape, dtype=dtype)``; from :data:`MIN_BYTES` on its
    memory is a reused (or new, huge-page-advised) mapping that goes back to the free list when freed."""
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MIN_BYTES or not MAPPINGS:
        return torch.empty(shape, dtype=dtype)
    buffer = FREE.take(nbytes)
    if buffer is None:
        buffer = new_mapping(nbytes)
    array = np.frombuffer(buffer, dtype=np.uint8)
    weakref.finalize(array, FREE.give, buffer).atexit = False
    return torch.from_numpy(array).view(dtype).view(shape)
