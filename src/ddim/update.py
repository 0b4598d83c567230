"""The DDIM update applied to tensors, given one row of folded coefficients.

See :mod:`ddim.coefficients` for the algebra: with the six folded coefficients of a timestep,

    x0     = transform(X0_X * x + X0_M * m)                      (transform: clip or threshold)
    x_prev = PREV_X * x + PREV_M * m + PREV_X0 * x0 + STD * z   (only structurally non-zero terms)

Eager operations (CPU, or CUDA without Triton): 2 for x0 (0 for sample prediction), 1 in-place
clip, then one per x_prev term: 4 in the plain configuration, 5 with clipping, +1 with noise. On
the CPU, tensors larger than the caches are processed in chunks so that the intermediate passes stay
in cache and each tensor crosses memory once. (A ``torch.compile``'d CPU version was measured and
does not win: see the README, section "performance".) On CUDA one Triton kernel does the whole step
(:mod:`ddim.kernels`) when Triton is installed.

Coefficients come in the folded form of :mod:`ddim.coefficients`: a :class:`~ddim.coefficients.HostRow`
of Python floats (host timestep: no device tensor is made for them) or :class:`~ddim.coefficients.DeviceRows`
(device timestep: the rows are picked on the device, nothing is read on the host). Half-precision inputs
are computed in float32 with float64-derived coefficients and returned in their own dtype.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import cast

import torch

from ddim.coefficients import (
    NUM_COLUMNS,
    PREV_M,
    PREV_X,
    PREV_X0,
    STD,
    X0_M,
    X0_X,
    DeviceRows,
    Folded,
    HostRow,
    UpdateTerms,
)
from ddim.cpu_buffers import empty_cpu
from ddim.cpu_chunks import update_in_chunks
from ddim.tensor_checks import leading_shape
from ddim.thresholding import X0Transform, threshold_scale
from ddim.validation import ArgumentTypeError, ArgumentValueError

#: Elements from which a CPU update is processed in cache-sized chunks (:mod:`ddim.cpu_chunks`).
CPU_CHUNK_THRESHOLD = 1 << 21


Coefficient = float | torch.Tensor


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision inputs, the input dtype otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def coefficient_rows(coefficients: Folded, like: torch.Tensor) -> torch.Tensor | None:
    """The coefficients as a (b, 6) tensor on ``like``'s device (b is 1 or the batch size), or ``None``
    for a :class:`~ddim.coefficients.HostRow` (host timestep: no device tensor is made for it)."""
    if isinstance(coefficients, HostRow):
        return None
    if not isinstance(coefficients, DeviceRows):
        raise ArgumentTypeError(f"coefficients must be a HostRow or DeviceRows, got {type(coefficients).__name__}")
    rows = coefficients.rows()
    if rows.shape[-1] != NUM_COLUMNS or coefficients.table.ndim > 2:
        raise ArgumentValueError(
            f"coefficient rows must have shape (6,) or (B, 6), got {tuple(coefficients.table.shape)}"
        )
    try:
        leading_shape(rows.shape[0], like.shape)
    except ArgumentValueError:
        raise ArgumentValueError(
            f"{rows.shape[0]} coefficient rows for a sample of shape {tuple(like.shape)}; need 1, or one per "
            "batch row (or per element of its leading dimensions)"
        ) from None
    return rows.to(device=like.device, dtype=compute_dtype(like.dtype))


def broadcast_columns(rows: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> Sequence[torch.Tensor]:
    """The six columns of (b, 6) rows, each shaped to broadcast over a tensor of ``shape``: one row for all,
    or one per element of its leading dimensions (``b`` = B, B * F, ...; see :func:`leading_shape`)."""
    if rows.shape[0] == 1:
        return rows[0].unbind(0)
    return rows.reshape(*leading_shape(rows.shape[0], shape), NUM_COLUMNS).unbind(-1)


@functools.lru_cache(maxsize=4096)
def scalar_tensors(values: tuple[float, ...], dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """0-dim CPU tensors holding ``values``: a product with one skips wrapping a Python scalar per call."""
    return tuple(torch.tensor(v, dtype=dtype) for v in values)


def scaled(tensor: torch.Tensor, coefficient: Coefficient, out: torch.Tensor | None) -> torch.Tensor:
    """coefficient * tensor, into ``out`` when given."""
    if out is None:
        return tensor.mul(coefficient)
    return torch.mul(tensor, coefficient, out=out)


def accumulate(acc: torch.Tensor, coefficient: Coefficient, tensor: torch.Tensor) -> torch.Tensor:
    """acc += coefficient * tensor, in place (``acc`` is a tensor this module created)."""
    if isinstance(coefficient, torch.Tensor):
        return acc.addcmul_(tensor, coefficient)
    return acc.add_(tensor, alpha=coefficient)


def records_gradients(sample: torch.Tensor, model_output: torch.Tensor, noise: torch.Tensor | None) -> bool:
    """Whether autograd records a step on these tensors (grad mode on and one of them requires grad)."""
    return torch.is_grad_enabled() and (
        sample.requires_grad or model_output.requires_grad or (noise is not None and noise.requires_grad)
    )


def columns_of(coefficients: Folded, like: torch.Tensor) -> Sequence[Coefficient]:
    """The six coefficients as floats (a host row) or as columns shaped to broadcast over ``like``."""
    rows = coefficient_rows(coefficients, like)
    if rows is None:
        return cast(HostRow, coefficients)
    return broadcast_columns(rows, like.shape)


def update_pass(
    x: torch.Tensor,
    m: torch.Tensor,
    z: torch.Tensor | None,
    c: Sequence[Coefficient],
    terms: UpdateTerms,
    transform: X0Transform,
    x0_out: torch.Tensor | None = None,
    prev_out: torch.Tensor | None = None,
    factors: Sequence[Coefficient] | None = None,
    renoise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_prev, x0)`` from x, m (and z) in the compute dtype with the fewest eager operations.

    x0 = X0_X x + X0_M m (2 ops; m itself for sample prediction), clipped in place (1 op);
    x_prev = PREV_X x + PREV_M m' + PREV_X0 x0 + STD z, one op per structurally non-zero term, with
    m' = ``renoise`` (CFG++'s unconditional output) or m. ``x0_out``/``prev_out`` receive the first
    operation of each (chunked processing); ``factors`` (default ``c``) are the same coefficients in the
    form used by the products that start x0 and x_prev.
    """
    f = c if factors is None else factors
    m_direction = m if renoise is None else renoise
    clip = transform.clip_range
    if not terms.x0_is_model_output:
        x0 = accumulate(scaled(x, f[X0_X], x0_out), c[X0_M], m)
    elif clip is not None:  # clipped into a new tensor: one operation
        x0 = m.clamp(-clip, clip) if x0_out is None else torch.clamp(m, -clip, clip, out=x0_out)
        clip = None
    elif x0_out is not None:
        x0 = x0_out.copy_(m)
    else:
        x0 = m if transform.threshold_ratio is None else m.clone()
    if transform.threshold_ratio is not None:
        x0 = x0.contiguous()
        per_row = x0.view(x0.shape[0], -1)
        s = threshold_scale(per_row, transform.threshold_ratio, transform.threshold_max).unsqueeze(1)
        if per_row.requires_grad:  # s is a function of x0: keep x0 for the backward pass
            x0 = (per_row.clamp(-s, s) / s).view(x0.shape)
        else:
            per_row.clamp_(-s, s).div_(s)
    elif clip is not None:
        x0.clamp_(-clip, clip)
    if terms.prev_x:
        prev = scaled(x, f[PREV_X], prev_out)
        if terms.prev_m:
            accumulate(prev, c[PREV_M], m_direction)
    else:
        prev = scaled(m_direction, f[PREV_M], prev_out)
    if terms.prev_x0:
        accumulate(prev, c[PREV_X0], x0)
    if z is not None:
        accumulate(prev, c[STD], z)
    return prev, x0


def torch_update(
    sample: torch.Tensor,
    model_output: torch.Tensor,
    coefficients: Folded,
    terms: UpdateTerms,
    transform: X0Transform,
    noise: torch.Tensor | None = None,
    renoise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pure-torch update. Returns ``(prev_sample, x0)`` in the dtype of ``sample``.

    ``renoise``: the output the noise direction is taken from (CFG++), default ``model_output``. On the
    CPU a tensor of :data:`CPU_CHUNK_THRESHOLD` elements or more is processed in chunks so that every
    intermediate pass stays in cache (one pass over memory per tensor), each chunk's operations shared by
    torch's intra-op threads (:mod:`ddim.cpu_chunks`), into reusable output buffers (:mod:`ddim.cpu_buffers`).
    """
    rows = coefficient_rows(coefficients, sample)
    dtype = sample.dtype
    work = compute_dtype(dtype)
    c: Sequence[Coefficient]
    factors: Sequence[Coefficient] | None = None
    if rows is None:
        c = cast(HostRow, coefficients)
        if sample.device.type == "cpu":
            factors = scalar_tensors(tuple(c), work)
    else:
        c = broadcast_columns(rows, sample.shape)
    chunked = (
        sample.device.type == "cpu"
        and sample.numel() >= CPU_CHUNK_THRESHOLD
        and not records_gradients(sample, model_output, noise)  # autograd cannot record writes into ``out=``
        and (rows is None or rows.shape[0] == 1)
        and transform.threshold_ratio is None
        and not torch.compiler.is_compiling()
        and renoise is None
    )
    if not chunked:
        x = sample if sample.dtype == work else sample.to(work)
        m = model_output if model_output.dtype == work else model_output.to(work)
        m_direction = None if renoise is None else renoise.to(work)
        prev, x0 = update_pass(x, m, noise, c, terms, transform, factors=factors, renoise=m_direction)
        if work == dtype:
            return prev, x0
        return prev.to(dtype), x0.to(dtype)
    shape = sample.shape
    x, m = sample.reshape(-1), model_output.reshape(-1)
    z = noise.reshape(-1) if noise is not None else None
    prev_out, x0_out = empty_cpu(x.shape, dtype), empty_cpu(x.shape, dtype)
    update_in_chunks(update_pass, x, m, z, c, terms, transform, factors, prev_out, x0_out, work=work)
    return prev_out.view(shape), x0_out.view(shape)
