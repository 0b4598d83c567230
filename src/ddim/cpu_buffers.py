"""Large CPU output buffers backed by transparent huge pages (Linux), so first touch costs little.

A fresh large CPU tensor is memory the kernel maps on first touch, one 4 KiB page fault at a time;
on a virtual machine a fault costs microseconds, so filling a new 64 MiB output can take longer than
the arithmetic written into it. ``madvise(MADV_HUGEPAGE)`` on the fresh buffer (before it is touched)
lets the kernel map it in 2 MiB pages instead. It only advises: where it is unsupported (not Linux,
THP disabled) the buffer is an ordinary one. PyTorch's process-wide switch for the same effect is the
environment variable ``THP_MEM_ALLOC_ENABLE=1``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Callable

import torch

#: Buffers from this size on are advised.
MIN_BYTES = 4 << 20
PAGE = 4096
MADV_HUGEPAGE = 14


@functools.cache
def madvise() -> Callable[[int, int, int], int] | None:
    """libc's ``madvise`` on Linux, else ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    function = ctypes.CDLL(name, use_errno=True).madvise
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


def empty_cpu(shape: torch.Size | tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """``torch.empty(shape, dtype=dtype)`` on the CPU, advised to use huge pages when large."""
    tensor = torch.empty(shape, dtype=dtype)
    nbytes = tensor.numel() * tensor.element_size()
    advise = madvise() if nbytes >= MIN_BYTES else None
    if advise is not None:
        start = (tensor.data_ptr() + PAGE - 1) & ~(PAGE - 1)
        end = (tensor.data_ptr() + nbytes) & ~(PAGE - 1)
        advise(start, end - start, MADV_HUGEPAGE)
    return tensor
