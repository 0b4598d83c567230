"""Checks of tensor arguments: timesteps given as numbers or tensors, and the tensors a step reads."""

from __future__ import annotations

import numpy as np
import torch

from ddim.validation import ArgumentTypeError, ArgumentValueError, is_int, type_error

#: A timestep: a Python or numpy int, or an integer tensor (0-dim, or one per batch row).
Timestep = int | np.integer | torch.Tensor
#: Tensor dtypes accepted for a timestep.
INTEGER_DTYPES = frozenset(
    {torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32, torch.uint64}
)


def check_host_timestep(timestep: object, total: int, name: str = "timestep", negative: bool = False) -> int:
    """A Python or numpy integer timestep as an int in [0, total), or below ``total`` when ``negative``."""
    if type(timestep) is int and 0 <= timestep < total:  # the common case first
        return timestep
    if not is_int(timestep):
        raise type_error(name, timestep, "an int, a numpy integer or an integer tensor")
    t = int(timestep)  # type: ignore[call-overload]
    if t >= total or (t < 0 and not negative):
        raise ArgumentValueError(f"{name}={t} is out of range; {allowed_timesteps(total, negative)}")
    return t


def check_timestep_values(timestep: torch.Tensor, total: int, name: str = "timestep", negative: bool = False) -> None:
    """``ValueError`` naming the first entry of a CPU timestep tensor outside [0, total) (below ``total`` when
    ``negative``); reads the tensor, so CPU only."""
    timestep = as_index(timestep)
    bad = timestep >= total if negative else (timestep < 0) | (timestep >= total)
    if bool(bad.any()):
        value = int(timestep[bad][0])
        raise ArgumentValueError(f"{name} contains {value}, out of range; {allowed_timesteps(total, negative)}")


def allowed_timesteps(total: int, negative: bool = False) -> str:
    """The allowed range of a timestep in the messages above (``negative``: a landing past timestep 0 too)."""
    low = "any negative number (the final alpha) or 0" if negative else "0"
    return f"allowed values are {low}..{total - 1} (num_train_timesteps={total})"


def timestep_index(name: str, value: object, total: int, *, negative: bool = False) -> torch.Tensor:
    """A timestep (int or integer tensor of any shape) as an int64 tensor, checked to lie in [0, total), or
    below ``total`` when ``negative`` (a landing past timestep 0). A tensor on an accelerator, or one being
    traced by ``torch.compile``, is not read."""
    if not isinstance(value, torch.Tensor):
        return torch.tensor(check_host_timestep(value, total, name, negative), dtype=torch.int64)
    if value.dtype not in INTEGER_DTYPES:
        raise ArgumentTypeError(f"{name} must be an integer tensor, got dtype {value.dtype}")
    index = as_index(value)
    if index.device.type == "cpu" and not torch.compiler.is_compiling():
        check_timestep_values(index, total, name, negative)
    return index


def check_timestep_shape(name: str, timestep: torch.Tensor, like: torch.Tensor, *, any_row_shape: bool = False) -> None:
    """``ValueError`` unless a timestep tensor has one entry, or shape S with ``like.shape[:len(S)] == S``
    (one timestep per batch row, per (row, frame), ...: it broadcasts over the remaining dimensions). With
    ``any_row_shape`` any shape holding one entry per batch row is read row by row, as diffusers' forward
    process flattens it."""
    batch = like.shape[0] if like.ndim else 1
    if timestep.numel() == 1 or tuple(timestep.shape) == tuple(like.shape[: timestep.ndim]):
        return
    if any_row_shape and timestep.numel() == batch:
        return
    if timestep.ndim == 1:
        raise ArgumentValueError(
            f"{name} has {timestep.shape[0]} entries; a 1-D {name} needs one per batch row "
            f"(batch size {batch}) or one for all"
        )
    raise ArgumentValueError(
        f"{name} shape {tuple(timestep.shape)} must equal the leading dimensions of the sample shape "
        f"{tuple(like.shape)} (one timestep per element of those dimensions)"
    )


def leading_shape(count: int, shape: torch.Size | tuple[int, ...]) -> tuple[int, ...]:
    """The shape that spreads ``count`` per-entry values (in row-major order) over the leading dimensions of
    ``shape`` and broadcasts over the rest: ``shape[:k] + (1,) * (len(shape) - k)`` for the smallest k with
    ``prod(shape[:k]) == count``."""
    size = 1
    for k in range(len(shape) + 1):
        if size == count:
            return tuple(shape[:k]) + (1,) * (len(shape) - k)
        if k < len(shape):
            size *= shape[k]
    raise ArgumentValueError(f"{count} per-entry values do not fill the leading dimensions of shape {tuple(shape)}")


def check_floating(name: str, tensor: object) -> torch.Tensor:
    """``tensor`` after checking it is a tensor of a floating dtype (an integer sample would be truncated)."""
    if not isinstance(tensor, torch.Tensor):
        raise type_error(name, tensor, "a tensor")
    if not tensor.is_floating_point():
        raise ArgumentTypeError(
            f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64), got dtype {tensor.dtype}"
        )
    return tensor


def as_index(timestep: torch.Tensor) -> torch.Tensor:
    """An integer timestep tensor as int64 on its own device (no host read): comparisons with T and
    ``index_select`` then work for every integer dtype (int8 overflows at 128, uint16 has no kernels)."""
    return timestep if timestep.dtype == torch.int64 else timestep.to(torch.int64)


def check_step_tensors(model_output: object, sample: object) -> None:
    """``TypeError`` unless both are floating-point tensors, ``ValueError`` unless their shapes are equal."""
    if not isinstance(model_output, torch.Tensor) or not isinstance(sample, torch.Tensor):
        raise ArgumentTypeError(
            f"model_output and sample must be tensors, got {type(model_output).__name__} and {type(sample).__name__}"
        )
    check_floating("model_output", model_output)
    check_floating("sample", sample)
    if model_output.shape != sample.shape:
        raise ArgumentValueError(
            f"model_output shape {tuple(model_output.shape)} must equal sample shape {tuple(sample.shape)}"
        )


def check_broadcasts_to(name: str, tensor: torch.Tensor, like: torch.Tensor) -> None:
    """``ValueError`` unless ``tensor`` broadcasts to the shape of ``like`` without enlarging it."""
    try:
        fits = torch.broadcast_shapes(tensor.shape, like.shape) == like.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ArgumentValueError(
            f"{name} shape {tuple(tensor.shape)} does not broadcast to the sample shape {tuple(like.shape)}"
        )
