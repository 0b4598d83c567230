"""Fused kernels for the DDIM step; Triton is optional and imported lazily.

:func:`fused_update` runs the whole update (:mod:`ddim.update`) as one Triton kernel: it reads x_t,
the model output and (eta > 0) the noise once, computes in float32 (float64 coefficients rounded once
to float32) and writes x_prev and x0 in the input dtype. Per-row coefficients (a 1-D timestep) and a
timestep still on the device are gathered inside the kernel, so a step is one launch and no sync.

Set ``DDIM_FUSED_KERNEL=0`` in the environment (read at import) or :data:`ENABLED` to ``False`` to
use the pure-torch path, which gives the same numbers up to float32 rounding.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import torch

#: Whether CUDA steps use the Triton kernel when Triton is installed.
ENABLED: bool = os.environ.get("DDIM_FUSED_KERNEL", "1") != "0"
#: Input dtypes the kernel handles (float64 takes the torch path).
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_TRITON: bool | None = None


def triton_installed() -> bool:
    """Whether the ``triton`` package can be imported (checked once, without importing it)."""
    global _TRITON
    if _TRITON is None:
        _TRITON = importlib.util.find_spec("triton") is not None
    return _TRITON


def fused_update_available(sample: torch.Tensor, model_output: torch.Tensor, noise: torch.Tensor | None) -> bool:
    """Whether :func:`fused_update` handles these tensors: CUDA, Triton installed, kernel dtypes, same shape."""
    if not ENABLED or not triton_installed():
        return False
    if sample.dtype not in KERNEL_DTYPES or model_output.dtype not in KERNEL_DTYPES:
        return False
    if model_output.device != sample.device or model_output.shape != sample.shape:
        return False
    return noise is None or (noise.device == sample.device and noise.dtype in KERNEL_DTYPES)


def fused_update(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """See :func:`ddim.kernels.triton_update.fused_update` (imported on first use)."""
    from ddim.kernels.triton_update import fused_update as launch

    return launch(*args, **kwargs)


__all__ = ["ENABLED", "KERNEL_DTYPES", "fused_update", "fused_update_available", "triton_installed"]
