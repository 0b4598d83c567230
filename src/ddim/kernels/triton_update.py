"""The whole DDIM update as one Triton kernel (imported only when Triton is installed).

Per element, in float32 (DDIM paper, eqs. 9, 12 and 16 folded as in :mod:`ddim.coefficients`)::

    x0     = transform(X0_X x + X0_M m)        transform: none | clamp to [-r, r] | clamp to [-s, s] / s
    x_prev = PREV_X0 x0 + PREV_X x + PREV_M m + STD z

One read of x_t, the model output and (eta > 0) the noise, one write of x_prev and x0, in the input
dtype. With per-step seeds instead of a noise tensor the noise z is drawn inside the kernel
(Philox4x32-10 keyed by the seed, one counter per four elements, two Box-Muller pairs from its four
words), so an eta > 0 step reads x_t and the model output once and writes once. The coefficients come from
kernel arguments (host timestep), from (b, 6) rows, or from the device table indexed by a device
timestep inside the kernel (clamped to [-1, T] and wrapped onto the NaN rows, as
:class:`ddim.coefficients.DeviceRows` does), so a step is one launch and no sync. The grid is
(blocks per row, rows): rows are batch rows when coefficients, threshold scales or seeds differ per
row, else the whole tensor is one row.

Launches go through :class:`ddim.kernels.direct_launch.DirectLauncher` (the compiled kernel's
launcher called directly once a binding is verified; Triton's JIT path otherwise).

Runs on CPU tensors under ``TRITON_INTERPRET=1`` (the kernel is built on first use, after the
environment is read), which is how it is tested without a GPU.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl

from ddim import coefficients as columns
from ddim.coefficients import DeviceRows, Folded
from ddim.kernels.direct_launch import DirectLauncher, alignment_bits, int_class
from ddim.thresholding import X0Transform, threshold_scale
from ddim.update import columns_of
from ddim.validation import ArgumentValueError

NUM_COLUMNS = columns.NUM_COLUMNS
# The table's column positions, named once in ddim.coefficients, as compile-time constants of the kernel.
COL_X0_X = tl.constexpr(columns.X0_X)
COL_X0_M = tl.constexpr(columns.X0_M)
COL_PREV_X0 = tl.constexpr(columns.PREV_X0)
COL_PREV_X = tl.constexpr(columns.PREV_X)
COL_PREV_M = tl.constexpr(columns.PREV_M)
COL_STD = tl.constexpr(columns.STD)
ROW_WIDTH = tl.constexpr(columns.NUM_COLUMNS)

#: Philox4x32 multipliers and key increments (Salmon et al. 2011; the values of Triton's tl.randn).
PHILOX_M0 = tl.constexpr(0xD2511F53)
PHILOX_M1 = tl.constexpr(0xCD9E8D57)
PHILOX_W0 = tl.constexpr(0x9E3779B9)
PHILOX_W1 = tl.constexpr(0xBB67AE85)

BLOCK = 2048
NUM_WARPS = 8
#: CUDA's limit on the second grid dimension (rows with their own coefficients).
MAX_GRID_ROWS = 65535
#: x0 modes of the kernel.
X0_PLAIN, X0_CLIP, X0_THRESHOLD = 0, 1, 2
#: Where the coefficients come from.
FROM_ARGS, FROM_ROWS, FROM_TABLE = 0, 1, 2
#: Where the noise comes from: none (eta = 0), a tensor, or drawn in the kernel from per-step seeds.
NOISE_NONE, NOISE_TENSOR, NOISE_KERNEL = 0, 1, 2
#: The table columns in the order of the scalar arguments c0..c5.
SCALAR_ORDER = (columns.X0_X, columns.X0_M, columns.PREV_X0, columns.PREV_X, columns.PREV_M, columns.STD)


def standard_normals_source(seed, counter):  # no annotations: Triton would read them
    """Four standard normals per counter (jitted by :func:`kernel`, so it also runs in the interpreter):
    Philox4x32-10 (Salmon et al. 2011) on (counter lo, counter hi, 0, 0) keyed (seed lo, seed hi); each
    word to a uniform in [0, 1) as Triton's ``tl.randn`` maps it (as int32, negatives folded, times 2^-31);
    Box-Muller on the pairs (u0, u1) and (u2, u3), radius from the first (floored at 1e-7), both branches:
    (r cos 2 pi u1, r sin 2 pi u1, r' cos 2 pi u3, r' sin 2 pi u3)."""
    c0 = counter.to(tl.uint32)
    c1 = (counter >> 32).to(tl.uint32)
    c2 = c0 * 0
    c3 = c0 * 0
    key = seed.to(tl.uint64)
    k0 = (key & 0xFFFFFFFF).to(tl.uint32)
    k1 = ((key >> 32) & 0xFFFFFFFF).to(tl.uint32)
    for _ in tl.static_range(10):
        p0, p2 = c0, c2
        c0 = tl.umulhi(PHILOX_M1, p2) ^ c1 ^ k0
        c2 = tl.umulhi(PHILOX_M0, p0) ^ c3 ^ k1
        c1 = tl.mul(PHILOX_M1, p2, sanitize_overflow=False)
        c3 = tl.mul(PHILOX_M0, p0, sanitize_overflow=False)
        k0 = tl.add(k0, PHILOX_W0, sanitize_overflow=False)
        k1 = tl.add(k1, PHILOX_W1, sanitize_overflow=False)
    i0 = c0.to(tl.int32, bitcast=True)
    i1 = c1.to(tl.int32, bitcast=True)
    i2 = c2.to(tl.int32, bitcast=True)
    i3 = c3.to(tl.int32, bitcast=True)
    u0 = tl.maximum(1.0e-7, tl.where(i0 < 0, ~i0, i0) * 4.6566127342e-10)
    u1 = tl.where(i1 < 0, ~i1, i1) * 4.6566127342e-10
    u2 = tl.maximum(1.0e-7, tl.where(i2 < 0, ~i2, i2) * 4.6566127342e-10)
    u3 = tl.where(i3 < 0, ~i3, i3) * 4.6566127342e-10
    r01 = tl.sqrt(-2.0 * tl.log(u0))
    r23 = tl.sqrt(-2.0 * tl.log(u2))
    cos1, sin1 = turn_cos_sin(u1)
    cos3, sin3 = turn_cos_sin(u3)
    return r01 * cos1, r01 * sin1, r23 * cos3, r23 * sin3


def turn_cos_sin_source(u):  # no annotations: Triton would read them
    """cos(2 pi u) and sin(2 pi u) for u in [0, 1): the nearest quarter turn q = round(4 u) leaves
    phi = 2 pi (u - q / 4) in [-pi/4, pi/4], where Taylor polynomials to degree 10 (cos) and 9 (sin) are
    within 1e-9 of the functions; rotating by q quarter turns gives the result."""
    q = tl.floor(u * 4.0 + 0.5)
    phi = (u - q * 0.25) * 6.283185307179586
    p2 = phi * phi
    s = phi * (1.0 + p2 * (-1.0 / 6.0 + p2 * (1.0 / 120.0 + p2 * (-1.0 / 5040.0 + p2 * (1.0 / 362880.0)))))
    c = 1.0 + p2 * (-0.5 + p2 * (1.0 / 24.0 + p2 * (-1.0 / 720.0 + p2 * (1.0 / 40320.0 + p2 * (-1.0 / 3628800.0)))))
    k = q.to(tl.int32) & 3
    cos = tl.where(k == 0, c, tl.where(k == 1, -s, tl.where(k == 2, -c, s)))
    sin = tl.where(k == 0, s, tl.where(k == 1, c, tl.where(k == 2, -s, -c)))
    return cos, sin


standard_normals: Any = None  #: standard_normals_source jitted by kernel()
turn_cos_sin: Any = None  #: turn_cos_sin_source jitted by kernel()


@functools.cache
def kernel() -> Any:
    """The jitted kernel, built on first use (so ``TRITON_INTERPRET`` is read when it is needed)."""

    global standard_normals, turn_cos_sin  # module globals: the interpreter resolves callees there, not in closures
    turn_cos_sin = triton.jit(turn_cos_sin_source)
    standard_normals = triton.jit(standard_normals_source)

    @triton.jit
    def ddim_step_kernel(
        x_ptr,
        m_ptr,
        z_ptr,
        prev_ptr,
        x0_ptr,
        coef_ptr,
        index_ptr,
        scale_ptr,
        seed_ptr,
        c0,
        c1,
        c2,
        c3,
        c4,
        c5,
        clip,
        row_numel,
        coef_row_stride,
        index_row_stride,
        table_rows,
        seed_row_stride,
        counter_row_stride,
        COEF_SOURCE: tl.constexpr,
        X0_MODE: tl.constexpr,
        NOISE: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        row = tl.program_id(1).to(tl.int64)
        if NOISE == 2:  # a (BLOCK / 4, 4) tile: row j of it takes the four normals of counter j
            lane = tl.arange(0, 4)[None, :]
            offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK // 4)[:, None] * 4 + lane
        else:
            offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < row_numel
        at = row * row_numel + offsets
        if COEF_SOURCE == 0:  # scalar arguments: the launcher passes them by column name (see fused_update)
            x0_x, x0_m, prev_x0, prev_x, prev_m, std = c0, c1, c2, c3, c4, c5
        else:
            if COEF_SOURCE == 2:
                t = tl.load(index_ptr + row * index_row_stride).to(tl.int64)
                t = tl.minimum(tl.maximum(t, -1), table_rows - 2)
                coef = coef_ptr + ((t + table_rows) % table_rows) * ROW_WIDTH
            else:
                coef = coef_ptr + row * coef_row_stride
            x0_x = tl.load(coef + COL_X0_X).to(tl.float32)
            x0_m = tl.load(coef + COL_X0_M).to(tl.float32)
            prev_x0 = tl.load(coef + COL_PREV_X0).to(tl.float32)
            prev_x = tl.load(coef + COL_PREV_X).to(tl.float32)
            prev_m = tl.load(coef + COL_PREV_M).to(tl.float32)
            std = tl.load(coef + COL_STD).to(tl.float32)
        x = tl.load(x_ptr + at, mask=mask).to(tl.float32)
        m = tl.load(m_ptr + at, mask=mask).to(tl.float32)
        x0 = x0_x * x + x0_m * m
        if X0_MODE == 1:
            x0 = tl.minimum(tl.maximum(x0, -clip), clip)
        if X0_MODE == 2:
            s = tl.load(scale_ptr + row).to(tl.float32)
            x0 = tl.minimum(tl.maximum(x0, -s), s) / s
        prev = prev_x0 * x0 + prev_x * x + prev_m * m
        if NOISE == 1:
            z = tl.load(z_ptr + at, mask=mask).to(tl.float32)
            prev = prev + std * z
        if NOISE == 2:  # counter-based: element i of the row takes normal i % 4 of counter i // 4
            seed = tl.load(seed_ptr + row * seed_row_stride)
            quarter = tl.program_id(0).to(tl.int64) * (BLOCK // 4) + tl.arange(0, BLOCK // 4)[:, None]
            n0, n1, n2, n3 = standard_normals(seed, row * counter_row_stride + quarter)
            z = tl.where(lane < 2, tl.where(lane == 0, n0, n1), tl.where(lane == 2, n2, n3))
            prev = prev + std * z
        tl.store(prev_ptr + at, prev.to(prev_ptr.dtype.element_ty), mask=mask)
        tl.store(x0_ptr + at, x0.to(x0_ptr.dtype.element_ty), mask=mask)

    return ddim_step_kernel


#: The kernel's compile-time parameters, in order (they end its parameter list).
CONSTEXPRS = ("COEF_SOURCE", "X0_MODE", "NOISE", "BLOCK")
#: Positions of the outputs (prev_ptr, x0_ptr) among the kernel's arguments.
OUTPUTS = (3, 4)


LAUNCHERS: dict[int, DirectLauncher] = {}


def launcher() -> DirectLauncher:
    """The checked direct launcher of the current :func:`kernel` (rebuilt with it; see
    :mod:`ddim.kernels.direct_launch`)."""
    jitted = kernel()
    found = LAUNCHERS.get(id(jitted))
    if found is None or found.jitted is not jitted:
        LAUNCHERS.clear()
        found = LAUNCHERS[id(jitted)] = DirectLauncher(jitted, CONSTEXPRS)
    return found


class Launch(NamedTuple):
    """One prepared launch: the outputs, the binding key, the grid and every kernel argument in order."""

    prev: torch.Tensor
    x0: torch.Tensor
    key: tuple[Any, ...]
    grid: tuple[int, int, int]
    arguments: tuple[Any, ...]


def fused_update(
    sample: torch.Tensor,
    model_output: torch.Tensor,
    coefficients: Folded,
    transform: X0Transform,
    noise: torch.Tensor | None = None,
    seeds: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prev_sample, pred_original_sample)`` of one DDIM step in one kernel launch; see the module doc.

    ``seeds`` (int64, one value, or one per batch row; on the sample's device) draws the noise inside
    the kernel instead of reading ``noise`` (see :mod:`ddim.kernels.kernel_noise`).
    """
    launch = prepare_launch(sample, model_output, coefficients, transform, noise, seeds)
    if launch.grid[0] > 0:
        launcher().launch(launch.key, launch.grid, launch.arguments, OUTPUTS, NUM_WARPS)
    return launch.prev, launch.x0  # empty_like(x): already shaped like sample


def prepare_launch(
    sample: torch.Tensor,
    model_output: torch.Tensor,
    coefficients: Folded,
    transform: X0Transform,
    noise: torch.Tensor | None = None,
    seeds: torch.Tensor | None = None,
) -> Launch:
    """The outputs (allocated), key, grid and arguments of :func:`fused_update`'s launch (grid (0, 0, 0): nothing
    to launch)."""
    batch = sample.shape[0] if sample.ndim else 1
    x, m = sample.contiguous(), model_output.contiguous()
    noise_mode, z, seed = NOISE_NONE, x, x
    seed_stride = 0
    per_row = False
    if noise is not None:
        if seeds is not None:
            raise ArgumentValueError("pass noise or seeds to fused_update, not both")
        noise_mode, z = NOISE_TENSOR, noise.contiguous()
    elif seeds is not None:
        noise_mode, seed = NOISE_KERNEL, seeds.reshape(-1)
        if seed.dtype != torch.int64 or seed.numel() not in (1, batch) or seed.device != x.device:
            raise ArgumentValueError(
                f"seeds must be int64 on {x.device} with 1 or {batch} values, got {seed.dtype} with "
                f"{seed.numel()} values on {seed.device}"
            )
        if seed.numel() > 1:
            per_row, seed_stride = True, 1
    prev, x0 = torch.empty_like(x), torch.empty_like(x)
    if x.numel() == 0:
        return Launch(prev, x0, (), (0, 0, 0), ())
    scalars: Sequence[float] = (0.0,) * NUM_COLUMNS
    coef_ptr, index_ptr, scale_ptr = x, x, x
    coef_stride = index_stride = table_rows = 0
    if isinstance(coefficients, DeviceRows) and coefficients.index is not None:
        source, coef_ptr = FROM_TABLE, coefficients.table
        index_ptr = coefficients.index.reshape(-1)
        if index_ptr.numel() > 1:
            per_row, index_stride = True, 1
        table_rows = coefficients.table.shape[0]
    elif isinstance(coefficients, DeviceRows):
        rows = coefficients.table.reshape(-1, NUM_COLUMNS).contiguous()
        source, coef_ptr = FROM_ROWS, rows
        if rows.shape[0] > 1:
            per_row, coef_stride = True, NUM_COLUMNS
    else:  # six numbers, passed as c0..c5 = X0_X, X0_M, PREV_X0, PREV_X, PREV_M, STD
        source, scalars = FROM_ARGS, [float(coefficients[i]) for i in SCALAR_ORDER]
    mode, clip = X0_PLAIN, 0.0
    if transform.threshold_ratio is not None:
        raw = coefficient_x0(x, m, coefficients)
        scale_ptr = threshold_scale(raw, transform.threshold_ratio, transform.threshold_max).float()
        mode, per_row = X0_THRESHOLD, True
    elif transform.clip_range is not None:
        mode, clip = X0_CLIP, float(transform.clip_range)
    rows_count = batch if per_row else 1
    if rows_count > MAX_GRID_ROWS:
        raise ArgumentValueError(
            f"batch size {batch} exceeds {MAX_GRID_ROWS} rows of per-row coefficients or thresholds"
        )
    row_numel = x.numel() // rows_count
    counter_stride = 0 if seed_stride else -(-row_numel // 4)  # one seed: counters run on over the rows
    arguments = (
        x,
        m,
        z,
        prev,
        x0,
        coef_ptr,
        index_ptr,
        scale_ptr,
        seed,
        *scalars,
        clip,
        row_numel,
        coef_stride,
        index_stride,
        table_rows,
        seed_stride,
        counter_stride,
        source,
        mode,
        noise_mode,
        BLOCK,
    )
    # The key fixes every argument's Triton specialisation. prev and x0 are fresh allocations (the
    # CUDA caching allocator starts blocks 512-byte aligned), so their alignment is not read.
    inputs = (x, m, z, coef_ptr, index_ptr, scale_ptr, seed)
    key = (
        (x.dtype, m.dtype, z.dtype, coef_ptr.dtype, index_ptr.dtype, scale_ptr.dtype, seed.dtype),
        alignment_bits(inputs),
        int_class(row_numel),
        int_class(counter_stride),
        coef_stride,
        index_stride,
        table_rows,
        seed_stride,
        source,
        mode,
        noise_mode,
    )
    return Launch(prev, x0, key, ((row_numel + BLOCK - 1) // BLOCK, rows_count, 1), arguments)


def coefficient_x0(x: torch.Tensor, m: torch.Tensor, coefficients: Folded) -> torch.Tensor:
    """The untransformed x0 = X0_X x + X0_M m in float32 (input to the per-row threshold scale)."""
    c = columns_of(coefficients, x)
    return x.float() * c[columns.X0_X] + m.float() * c[columns.X0_M]
