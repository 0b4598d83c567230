"""Noise drawn inside the fused kernel (``scheduler.noise_source = "kernel"``), run in Triton's interpreter.

The reference is Philox4x32-10 written out here with numpy (Salmon et al. 2011; checked against
Random123's known-answer vectors), each of its four words made a uniform as Triton's ``tl.randn`` makes one,
and the Box-Muller transform on the two pairs (four normals per counter): the kernel's noise must equal it
within float32 rounding. Statistics (mean, spread,
normal quantiles, correlations) and reproducibility are checked on the kernel's own draws.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from ddim import DDIMScheduler
from ddim import coefficients as columns
from ddim.coefficients import DeviceRows
from ddim.kernels.kernel_noise import SEED_END, draw_seeds
from ddim.thresholding import X0Transform

pytest.importorskip("triton", reason="triton is not installed (a test dependency on Linux x86-64)")

MASK = np.uint64(0xFFFFFFFF)


def philox4x32_10(counter: list[np.ndarray], key: list[np.ndarray]) -> list[np.ndarray]:
    """Philox4x32 with 10 rounds: multipliers 0xD2511F53, 0xCD9E8D57; Weyl key increments 0x9E3779B9, 0xBB67AE85."""
    c = [np.asarray(v, dtype=np.uint64) & MASK for v in counter]
    k0, k1 = (np.asarray(v, dtype=np.uint64) & MASK for v in key)
    for _ in range(10):
        p0, p1 = np.uint64(0xD2511F53) * c[0], np.uint64(0xCD9E8D57) * c[2]
        hi0, hi1 = p0 >> np.uint64(32), p1 >> np.uint64(32)
        c = [(hi1 ^ c[1] ^ k0) & MASK, p1 & MASK, (hi0 ^ c[3] ^ k1) & MASK, p0 & MASK]
        k0, k1 = (k0 + np.uint64(0x9E3779B9)) & MASK, (k1 + np.uint64(0xBB67AE85)) & MASK
    return c


def test_philox_reference_matches_the_known_answers() -> None:
    """Random123's kat_vectors for philox4x32_10 (counter, key -> output)."""
    cases = [
        ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
        ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
        (
            [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344],
            [0xA4093822, 0x299F31D0],
            [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1],
        ),
    ]
    for counter, key, want in cases:
        got = philox4x32_10([np.uint64(v) for v in counter], [np.uint64(v) for v in key])
        assert [int(v) for v in got] == want


def reference_normals(seed: int, count: int, first_counter: int = 0) -> np.ndarray:
    """The kernel's z for ``count`` elements whose counters start at ``first_counter``: element i is normal
    i % 4 of counter first_counter + i // 4. Per counter: Philox on (counter lo, counter hi, 0, 0) keyed
    (seed lo, seed hi); each word to a uniform (as int32, negatives folded: x < 0 -> -x - 1, times 2^-31);
    Box-Muller on (u0, u1) and (u2, u3) with u0, u2 floored at 1e-7: r cos, r sin, r' cos, r' sin."""
    counters = np.arange(first_counter, first_counter + -(-count // 4), dtype=np.uint64)
    zero = np.zeros_like(counters)
    key = [np.uint64(seed & 0xFFFFFFFF), np.uint64((seed >> 32) & 0xFFFFFFFF)]
    words = philox4x32_10([counters & MASK, counters >> np.uint64(32), zero, zero], key)

    def uniform(w: np.ndarray) -> np.ndarray:
        signed = w.astype(np.int64)
        signed = np.where(signed >= 2**31, signed - 2**32, signed)
        signed = np.where(signed < 0, -signed - 1, signed)
        return (signed.astype(np.float32) * np.float32(4.6566127342e-10)).astype(np.float64)

    u0, u1, u2, u3 = (uniform(w) for w in words)
    r01, r23 = np.sqrt(-2.0 * np.log(np.maximum(1e-7, u0))), np.sqrt(-2.0 * np.log(np.maximum(1e-7, u2)))
    a01, a23 = 2 * math.pi * u1, 2 * math.pi * u3
    normals = np.stack([r01 * np.cos(a01), r01 * np.sin(a01), r23 * np.cos(a23), r23 * np.sin(a23)], axis=1)
    return normals.reshape(-1)[:count]


@pytest.fixture
def interpreted(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    from ddim.kernels import triton_update

    triton_update.kernel.cache_clear()
    yield triton_update.fused_update
    triton_update.kernel.cache_clear()


def kernel_noise(fused_update: Any, shape: tuple[int, ...], seeds: list[int]) -> torch.Tensor:
    """The kernel's z alone: a step whose only non-zero coefficient is STD = 1 returns z."""
    row = [0.0] * columns.NUM_COLUMNS
    row[columns.STD] = 1.0
    x = torch.zeros(shape)
    prev, _ = fused_update(x, x, row, X0Transform(), seeds=torch.tensor(seeds, dtype=torch.int64))
    return prev


def test_kernel_noise_is_philox_and_box_muller_written_out(interpreted: Any) -> None:
    seed = 0x1234_5678_9ABC_DEF
    z = kernel_noise(interpreted, (3, 5000), [seed]).double().reshape(-1).numpy()
    want = reference_normals(seed, z.size)
    np.testing.assert_allclose(z, want, rtol=1e-5, atol=2e-5)
    # one seed per row: each row counts from 0 with its own seed
    seeds = [5, SEED_END - 1]
    z = kernel_noise(interpreted, (2, 4000), seeds).double().numpy()
    for row, s in enumerate(seeds):
        np.testing.assert_allclose(z[row], reference_normals(s, 4000), rtol=1e-5, atol=2e-5)


@pytest.mark.slow
def test_kernel_noise_statistics(interpreted: Any) -> None:
    n = 1 << 17
    z = kernel_noise(interpreted, (2, n // 2), [2024]).double().reshape(-1)
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.std()) - 1) < 5 * math.sqrt(0.5 / n)
    for level, share in ((1.0, 0.682689), (2.0, 0.954500), (3.0, 0.997300)):
        within = float((z.abs() < level).double().mean())
        assert abs(within - share) < 5 * math.sqrt(share * (1 - share) / n), (level, within)
    adjacent = float(torch.corrcoef(torch.stack([z[:-1], z[1:]]))[0, 1])
    assert abs(adjacent) < 5 / math.sqrt(n)
    other = kernel_noise(interpreted, (2, n // 2), [2025]).double().reshape(-1)
    assert abs(float(torch.corrcoef(torch.stack([z, other]))[0, 1])) < 5 / math.sqrt(n)
    again = kernel_noise(interpreted, (2, n // 2), [2024]).double().reshape(-1)
    assert torch.equal(z, again)


turn_cos_sin: Any = None  # the kernel's helper, set by the test below (the interpreter resolves callees globally)


def test_quarter_turn_cosine_and_sine_are_within_float32_rounding(interpreted: Any) -> None:
    """The kernel's cos/sin of 2 pi u (quarter-turn reduction, Taylor polynomials) on a dense grid of [0, 1) and
    next to every eighth of a turn, where the reduction switches quadrant."""
    import triton
    import triton.language as tl

    from ddim.kernels import triton_update

    triton_update.kernel()
    globals()["turn_cos_sin"] = triton_update.turn_cos_sin

    @triton.jit
    def probe(u_ptr, cos_ptr, sin_ptr, BLOCK: tl.constexpr):  # type: ignore[no-untyped-def]
        at = tl.arange(0, BLOCK)
        cos, sin = turn_cos_sin(tl.load(u_ptr + at))
        tl.store(cos_ptr + at, cos)
        tl.store(sin_ptr + at, sin)

    eighths = np.arange(9, dtype=np.float32) / 8
    near = np.concatenate([np.nextafter(eighths, -1), eighths, np.nextafter(eighths, 2)])
    u = np.concatenate([np.arange(8192 - near.size, dtype=np.float32) / (8192 - near.size), near])
    u = np.clip(u, 0, np.nextafter(np.float32(1), 0)).astype(np.float32)
    cos, sin = torch.empty(u.size), torch.empty(u.size)
    probe[(1,)](torch.from_numpy(u), cos, sin, BLOCK=u.size)
    angle = 2 * math.pi * u.astype(np.float64)
    np.testing.assert_allclose(cos.double().numpy(), np.cos(angle), rtol=0, atol=5e-7)
    np.testing.assert_allclose(sin.double().numpy(), np.sin(angle), rtol=0, atol=5e-7)


def test_rows_with_their_own_seed_do_not_depend_on_the_others(interpreted: Any) -> None:
    a = kernel_noise(interpreted, (2, 300), [11, 12])
    b = kernel_noise(interpreted, (2, 300), [11, 99])
    assert torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])
    one = kernel_noise(interpreted, (2, 300), [11])  # one seed: the rows differ
    assert not torch.equal(one[0], one[1])


def test_launch_rows_sharing_one_seed_continue_the_counters(interpreted: Any) -> None:
    """Per-row coefficients launch one grid row per batch row; with one seed, row r's counters start at
    r * ceil(row_numel / 4), so a ragged row shares no counter with the next."""
    row = [0.0] * columns.NUM_COLUMNS
    row[columns.STD] = 1.0
    x = torch.zeros(3, 1001)
    rows = DeviceRows(torch.tensor([row] * 3))
    seed = 77
    z, _ = interpreted(x, x, rows, X0Transform(), seeds=torch.tensor([seed], dtype=torch.int64))
    for r in range(3):
        np.testing.assert_allclose(z[r].double().numpy(), reference_normals(seed, 1001, r * 251), rtol=1e-5, atol=2e-5)


def test_scheduler_step_with_kernel_noise_is_the_step_with_that_noise(interpreted: Any) -> None:
    """``noise_source = "kernel"``: one seed drawn from the generator per step, z from counters counted over
    the sample."""
    s = DDIMScheduler(clip_sample=True)
    s.set_timesteps(10)
    s.noise_source = "kernel"
    g = torch.Generator().manual_seed(3)
    x, m = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    state = g.get_state()
    t = int(s.timesteps[4])
    got = s.step(m, t, x, eta=1.0, generator=g).prev_sample
    g.set_state(state)
    seed = int(torch.randint(0, SEED_END, (1,), generator=g, dtype=torch.int64))
    z = torch.from_numpy(reference_normals(seed, x.numel())).float().reshape(x.shape)
    reference = DDIMScheduler(clip_sample=True)
    reference.set_timesteps(10)
    want = reference.step(m, t, x, eta=1.0, variance_noise=z).prev_sample
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    g.set_state(state)
    assert torch.equal(s.step(m, t, x, eta=1.0, generator=g).prev_sample, got)  # reproducible
    assert not torch.equal(s.step(m, t, x, eta=1.0, generator=g).prev_sample, got)  # the next step: new seed


def test_kernel_noise_refuses_what_the_kernel_cannot_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    s = DDIMScheduler()
    s.set_timesteps(10)
    x = torch.randn(2, 4)
    s.noise_source = "kernel"
    with pytest.raises(ValueError, match="noise_source='kernel' needs the fused kernel"):
        s.step(x, int(s.timesteps[0]), x, eta=1.0)
    s.noise_source = "fast"
    with pytest.raises(ValueError, match="noise_source"):
        s.step(x, int(s.timesteps[0]), x, eta=1.0)
    s.noise_source = "kernel"
    s.step(x, int(s.timesteps[0]), x, eta=0.0)  # no noise needed: the ordinary step
    s.step(x, int(s.timesteps[0]), x, eta=1.0, variance_noise=x)  # noise given: used as given


def test_seeds_come_from_the_generators() -> None:
    g = torch.Generator().manual_seed(0)
    first = draw_seeds(g, 4, torch.device("cpu"))
    assert first.shape == (1,) and first.dtype == torch.int64 and 0 <= int(first) < SEED_END
    rows = draw_seeds([torch.Generator().manual_seed(i) for i in range(3)], 3, torch.device("cpu"))
    assert rows.shape == (3,) and len(set(rows.tolist())) == 3
    assert int(rows[1]) == int(draw_seeds(torch.Generator().manual_seed(1), 1, torch.device("cpu")))
    with pytest.raises(ValueError, match="one per batch row"):
        draw_seeds([torch.Generator()] * 2, 3, torch.device("cpu"))
    with pytest.raises(TypeError, match="generator"):
        draw_seeds([object()], 1, torch.device("cpu"))  # type: ignore[list-item]


needs_cuda_triton = pytest.mark.skipif(
    not torch.cuda.is_available() or not __import__("ddim.kernels").kernels.triton_installed(),
    reason="needs CUDA and Triton",
)


@needs_cuda_triton
def test_kernel_noise_on_cuda_is_the_reference() -> None:
    from ddim.kernels.triton_update import fused_update

    row = [0.0] * columns.NUM_COLUMNS
    row[columns.STD] = 1.0
    x = torch.zeros(3, 5000, device="cuda")
    seed = 0x1234_5678_9ABC_DEF
    z, _ = fused_update(x, x, row, X0Transform(), seeds=torch.tensor([seed], device="cuda"))
    want = reference_normals(seed, x.numel())
    np.testing.assert_allclose(z.double().cpu().reshape(-1).numpy(), want, rtol=1e-5, atol=1e-4)


@needs_cuda_triton
def test_graphed_sampler_with_kernel_noise_on_cuda() -> None:
    from ddim.graphs import GraphedSampler, SamplingPlan, run_steps

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x) * (t.to(x.dtype) / 1000).view(-1, 1, 1, 1)

    g = torch.Generator(device="cuda")
    s = DDIMScheduler()
    s.noise_source = "kernel"
    sampler = GraphedSampler(model, s, (2, 3, 16, 16), num_inference_steps=20, eta=1.0, generator=g)
    x_t = torch.randn(2, 3, 16, 16, device="cuda")
    g.manual_seed(3)
    first, second = sampler(x_t), sampler(x_t)
    g.manual_seed(3)
    assert torch.equal(sampler(x_t), first) and not torch.equal(first, second)
    eager = run_steps(model, s, x_t, SamplingPlan.build(s, 2), 1.0, g.manual_seed(3))
    torch.testing.assert_close(first, eager, rtol=1e-5, atol=1e-5)
