"""Host-to-device copies that do not block the host (no stream synchronisation)."""

from __future__ import annotations

import torch


def to_device_async(host: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``host`` as a tensor of ``dtype`` on ``device``, copied without a host-device sync.

    A copy from pageable host memory to a CUDA device waits for the copy to finish (a sync that
    ``torch.cuda.set_sync_debug_mode("error")`` refuses and a CUDA-graph warm-up must not contain);
    staged through pinned memory with ``non_blocking=True`` it is queued on the current stream like a
    kernel, and PyTorch's pinned-memory allocator keeps the staging buffer until the copy has run.
    Other devices get a plain ``Tensor.to``.
    """
    staged = host.to(dtype=dtype)
    if device.type != "cuda" or host.device.type != "cpu":
        return staged.to(device=device)
    return staged.pin_memory().to(device=device, non_blocking=True)
