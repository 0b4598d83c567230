"""The chunked CPU update split across threads: bit-equal to one thread in every configuration, each thread
on its own contiguous block, the caller's inference mode kept, and a usable pool in a forked child."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import ddim.cpu_chunks as cpu_chunks
import ddim.update as update
from ddim import DDIMScheduler
from ddim.coefficients import update_terms
from ddim.cpu_chunks import MIN_CHUNKS_PER_THREAD, thread_blocks, update_in_chunks
from ddim.thresholding import X0Transform
from ddim.update import update_pass

CHUNK = 37  # elements per chunk in these tests: a ragged last chunk
SHAPE = (3, 5, 7, 11)  # 1155 elements: 32 chunks
BITS = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


@pytest.fixture
def chunked_everywhere(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every CPU step chunked into CHUNK-element chunks, a thread taking as few as 2; thread count restored."""
    monkeypatch.setattr(update, "CPU_CHUNK_THRESHOLD", 1)
    monkeypatch.setattr(update, "CPU_CHUNK", CHUNK)
    monkeypatch.setattr(cpu_chunks, "MIN_CHUNKS_PER_THREAD", 2)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(BITS[t.dtype])


def step_at(threads: int, s: DDIMScheduler, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, ...]:
    torch.set_num_threads(threads)
    return s.step(*args, **kwargs).to_tuple()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("clip", [False, True])
def test_threads_give_the_bits_of_one_thread(
    chunked_everywhere: None, dtype: torch.dtype, prediction: str, clip: bool
) -> None:
    s = DDIMScheduler(prediction_type=prediction, clip_sample=clip, clip_sample_range=0.8)
    s.set_timesteps(10)
    g = torch.Generator().manual_seed(1)
    x, m, z = ((torch.randn(SHAPE, generator=g, dtype=torch.float64) * 1.5).to(dtype) for _ in range(3))
    assert len(thread_blocks(x.numel() // CHUNK + 1, 3)) == 3  # the test splits the work
    for t in (int(s.timesteps[1]), int(s.timesteps[-1])):
        for eta, noise in ((0.0, None), (1.0, z)):
            for clipped in (False, True):
                kwargs = {"eta": eta, "variance_noise": noise, "use_clipped_model_output": clipped}
                one = step_at(1, s, m, t, x, **kwargs)
                for threads in (2, 3):
                    many = step_at(threads, s, m, t, x, **kwargs)
                    for a, b in zip(one, many, strict=True):
                        assert a.dtype == b.dtype == dtype and a.shape == b.shape == SHAPE
                        assert torch.equal(bits(a), bits(b)), (threads, t, eta, clipped)


def test_threaded_chunks_equal_the_unchunked_step(chunked_everywhere: None, monkeypatch: pytest.MonkeyPatch) -> None:
    s = DDIMScheduler(prediction_type="epsilon", clip_sample=True)
    s.set_timesteps(10)
    g = torch.Generator().manual_seed(2)
    x, m, z = (torch.randn(SHAPE, generator=g) for _ in range(3))
    t = int(s.timesteps[2])
    threaded = step_at(2, s, m, t, x, eta=0.5, variance_noise=z)
    monkeypatch.setattr(update, "CPU_CHUNK_THRESHOLD", x.numel() + 1)
    whole = step_at(1, s, m, t, x, eta=0.5, variance_noise=z)
    for a, b in zip(whole, threaded, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_a_step_in_inference_mode_runs_on_threads(chunked_everywhere: None) -> None:
    s = DDIMScheduler()
    s.set_timesteps(10)
    g = torch.Generator().manual_seed(3)
    x, m = (torch.randn(SHAPE, generator=g) for _ in range(2))
    t = int(s.timesteps[4])
    one = step_at(1, s, m, t, x)
    with torch.inference_mode():
        many = step_at(2, s, m, t, x)
    assert all(torch.equal(a, b) for a, b in zip(one, many, strict=True))


def recording_pass(seen: list[tuple[int, int]]) -> cpu_chunks.ChunkPass:
    """``update_pass`` that records (thread id, first element of the chunk's x) per call."""

    def chunk_pass(x: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append((threading.get_ident(), int(x[0].item())))
        time.sleep(0.001)  # long enough that the other thread takes its block
        return update_pass(x, *args, **kwargs)

    return chunk_pass


def flat_inputs(numel: int) -> tuple[torch.Tensor, torch.Tensor, Sequence[float], torch.Tensor, torch.Tensor]:
    x = torch.arange(numel, dtype=torch.float32)
    return x, x.flip(0), (0.5, -0.25, 1.5, 0.75, 2.0, 0.0), torch.empty(numel), torch.empty(numel)


def test_each_thread_takes_one_contiguous_block() -> None:
    chunks, threads = 3 * MIN_CHUNKS_PER_THREAD + 1, 3
    x, m, c, prev, x0 = flat_inputs(chunks * 4 - 2)
    seen: list[tuple[int, int]] = []
    terms = update_terms("epsilon", False, False)
    update_in_chunks(
        recording_pass(seen), x, m, None, c, terms, X0Transform(), None, prev, x0, work=x.dtype, chunk=4, threads=3
    )
    assert sorted(first for _, first in seen) == list(range(0, x.numel(), 4))
    by_thread: dict[int, list[int]] = {}
    for ident, first in seen:
        by_thread.setdefault(ident, []).append(first // 4)
    blocks = thread_blocks(chunks, threads)
    assert len(blocks) == threads and len(by_thread) >= 2
    assert by_thread[threading.get_ident()] == list(blocks[0])  # the caller takes the first block, only that
    for walked in by_thread.values():  # a pool thread may take a second block after its first: whole, in order
        position = 0
        while position < len(walked):
            block = next(b for b in blocks if b.start == walked[position])
            assert walked[position : position + len(block)] == list(block)
            position += len(block)
    expected_prev, expected_x0 = update_pass(x, m, None, c, terms, X0Transform())
    assert torch.equal(prev, expected_prev) and torch.equal(x0, expected_x0)


def test_a_failing_chunk_raises_in_the_caller_after_every_thread_has_stopped() -> None:
    x, m, c, prev, x0 = flat_inputs(MIN_CHUNKS_PER_THREAD * 2 * 4)
    done: list[int] = []

    def failing(x: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if int(x[0].item()) == 0:  # the caller's first chunk
            raise RuntimeError("chunk failed")
        time.sleep(0.0005)
        done.append(int(x[0].item()))
        return update_pass(x, *args, **kwargs)

    terms = update_terms("epsilon", False, False)
    with pytest.raises(RuntimeError, match="chunk failed"):
        update_in_chunks(failing, x, m, None, c, terms, X0Transform(), None, prev, x0, work=x.dtype, chunk=4, threads=2)
    count = len(done)
    time.sleep(0.01)
    assert len(done) == count == MIN_CHUNKS_PER_THREAD  # the other thread's whole block, finished before the raise


@given(chunks=st.integers(1, 5000), threads=st.integers(1, 256))
def test_thread_blocks_cover_the_chunks_in_even_contiguous_blocks(chunks: int, threads: int) -> None:
    blocks = thread_blocks(chunks, threads)
    assert [i for block in blocks for i in block] == list(range(chunks))
    assert 1 <= len(blocks) <= threads
    sizes = [len(block) for block in blocks]
    assert max(sizes) - min(sizes) <= 1
    assert len(blocks) == 1 or min(sizes) >= MIN_CHUNKS_PER_THREAD
    assert len(blocks) == min(threads, max(1, chunks // MIN_CHUNKS_PER_THREAD))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("threads", 0, "threads must be a positive int, got 0"),
        ("threads", 1.5, "threads must be a positive int, got 1.5"),
        ("chunk", 0, "chunk must be a positive number of elements, got 0"),
    ],
)
def test_bad_thread_counts_and_chunk_sizes_are_refused(key: str, value: Any, message: str) -> None:
    x, m, c, prev, x0 = flat_inputs(8)
    arguments: dict[str, Any] = {"work": x.dtype, "chunk": 4, "threads": 2, key: value}
    with pytest.raises(ValueError, match=message):
        update_in_chunks(
            update_pass,
            x,
            m,
            None,
            c,
            update_terms("epsilon", False, False),
            X0Transform(),
            None,
            prev,
            x0,
            **arguments,
        )


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_gets_its_own_worker_threads() -> None:
    x, m, c, prev, x0 = flat_inputs(MIN_CHUNKS_PER_THREAD * 2 * 4)
    terms = update_terms("epsilon", False, False)
    run = (update_pass, x, m, None, c, terms, X0Transform(), None, prev, x0)
    update_in_chunks(*run, work=x.dtype, chunk=4, threads=2)  # the parent's pool exists now
    expected = prev.clone()
    pid = os.fork()
    if pid == 0:  # the child: a pool inherited as it is would queue the second block for ever
        prev.zero_()
        update_in_chunks(*run, work=x.dtype, chunk=4, threads=2)
        os._exit(0 if torch.equal(prev, expected) else 1)
    deadline = time.monotonic() + 30
    while (finished := os.waitpid(pid, os.WNOHANG)) == (0, 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    if finished == (0, 0):
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung")
    assert os.waitstatus_to_exitcode(finished[1]) == 0
