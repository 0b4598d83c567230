"""The chunked CPU update: each chunk's operations split by torch across its threads, bit-equal to one thread and
to the unchunked step in every configuration, with ragged splits; chunk sizes follow the thread count; bad sizes
are refused."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import ddim.cpu_chunks as cpu_chunks
import ddim.update as update
from ddim import DDIMScheduler
from ddim.coefficients import update_terms
from ddim.cpu_chunks import chunk_elements, update_in_chunks
from ddim.thresholding import X0Transform
from ddim.update import update_pass

#: Elements a thread in these tests: above torch's parallel grain (32768), so a chunk of two or three threads'
#: blocks is split among the threads, and ragged against every vector width.
BLOCK = 33333
SHAPE = (3, 5, 7, 2003)  # 210315 elements: six and a bit chunks on one thread, a ragged last chunk on any count
BITS = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


@pytest.fixture
def chunked_everywhere(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every CPU step chunked, BLOCK float32 elements a thread; the thread count restored afterwards."""
    monkeypatch.setattr(update, "CPU_CHUNK_THRESHOLD", 1)
    monkeypatch.setattr(cpu_chunks, "BLOCK_BYTES", BLOCK * 4)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(BITS[t.dtype])


def step_at(threads: int, s: DDIMScheduler, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, ...]:
    torch.set_num_threads(threads)
    return s.step(*args, **kwargs).to_tuple()


def test_a_chunk_is_split_among_the_threads(chunked_everywhere: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test below splits work: at 3 threads a chunk's operation runs on 3 threads (torch's own split)."""
    seen: list[int] = []

    def counting_pass(x: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(x.numel())
        return update_pass(x, *args, **kwargs)

    torch.set_num_threads(3)
    x = torch.randn(SHAPE).reshape(-1)
    terms = update_terms("epsilon", False, False)
    c = (0.5, -0.25, 1.5, 0.75, 2.0, 0.0)
    update_in_chunks(
        counting_pass, x, x, None, c, terms, X0Transform(), None, torch.empty_like(x), torch.empty_like(x), work=x.dtype
    )
    assert seen[:-1] == [3 * BLOCK] * (len(seen) - 1) and sum(seen) == x.numel() and seen[-1] % BLOCK != 0
    assert torch.get_num_threads() == 3 and 3 * BLOCK // 3 > 32768  # each thread's block above the grain


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("clip", [False, True])
def test_threads_give_the_bits_of_one_thread_and_of_the_unchunked_step(
    chunked_everywhere: None, monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, prediction: str, clip: bool
) -> None:
    s = DDIMScheduler(prediction_type=prediction, clip_sample=clip, clip_sample_range=0.8)
    s.set_timesteps(10)
    g = torch.Generator().manual_seed(1)
    x, m, z = ((torch.randn(SHAPE, generator=g, dtype=torch.float64) * 1.5).to(dtype) for _ in range(3))
    cases = [
        (t, {"eta": eta, "variance_noise": noise, "use_clipped_model_output": clipped})
        for t in (int(s.timesteps[1]), int(s.timesteps[-1]))
        for eta, noise in ((0.0, None), (1.0, z))
        for clipped in (False, True)
    ]
    one = [step_at(1, s, m, t, x, **kwargs) for t, kwargs in cases]
    for threads in (2, 3):
        for (t, kwargs), expected in zip(cases, one, strict=True):
            many = step_at(threads, s, m, t, x, **kwargs)
            for a, b in zip(expected, many, strict=True):
                assert a.dtype == b.dtype == dtype and a.shape == b.shape == SHAPE
                assert torch.equal(bits(a), bits(b)), (threads, t, kwargs["eta"])
    monkeypatch.setattr(update, "CPU_CHUNK_THRESHOLD", x.numel() + 1)
    for (t, kwargs), expected in zip(cases, one, strict=True):
        whole = step_at(2, s, m, t, x, **kwargs)
        for a, b in zip(expected, whole, strict=True):
            assert torch.equal(bits(a), bits(b)), ("unchunked", t, kwargs["eta"])


def test_a_step_in_inference_mode_gives_the_same_bits(chunked_everywhere: None) -> None:
    s = DDIMScheduler()
    s.set_timesteps(10)
    g = torch.Generator().manual_seed(3)
    x, m = (torch.randn(SHAPE, generator=g) for _ in range(2))
    t = int(s.timesteps[4])
    one = step_at(1, s, m, t, x)
    with torch.inference_mode():
        many = step_at(2, s, m, t, x)
    assert all(torch.equal(a, b) for a, b in zip(one, many, strict=True))


@given(threads=st.integers(1, 512), dtype=st.sampled_from([torch.float64, torch.float32]))
def test_a_chunk_is_one_block_per_thread(threads: int, dtype: torch.dtype) -> None:
    chunk = chunk_elements(threads, dtype)
    assert chunk == threads * (cpu_chunks.BLOCK_BYTES // dtype.itemsize)
    assert chunk // threads >= 32768  # every thread's share at least torch's parallel grain


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, "2"])
def test_bad_thread_counts_are_refused(threads: Any) -> None:
    with pytest.raises(ValueError, match=f"threads must be a positive int, got {threads!r}"):
        chunk_elements(threads, torch.float32)


@pytest.mark.parametrize("chunk", [0, -3, 2.5, True])
def test_bad_chunk_sizes_are_refused(chunk: Any) -> None:
    x = torch.arange(8, dtype=torch.float32)
    with pytest.raises(ValueError, match=f"chunk must be a positive number of elements, got {chunk!r}"):
        update_in_chunks(
            update_pass,
            x,
            x,
            None,
            (0.5, -0.25, 1.5, 0.75, 2.0, 0.0),
            update_terms("epsilon", False, False),
            X0Transform(),
            None,
            torch.empty(8),
            torch.empty(8),
            work=x.dtype,
            chunk=chunk,
        )
