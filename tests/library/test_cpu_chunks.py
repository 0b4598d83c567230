"""The chunked CPU update split across threads: bit-equal to one thread in every configuration, every chunk
computed once in runs of consecutive chunks, the caller's inference mode kept, a failure stopping every
thread, and a usable pool in a forked child."""

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
from ddim.cpu_chunks import MIN_CHUNKS_PER_THREAD, RUN_CHUNKS, ChunkRuns, threads_for, update_in_chunks
from ddim.thresholding import X0Transform
from ddim.update import update_pass

CHUNK = 37  # elements per chunk in these tests: a ragged last chunk
SHAPE = (3, 5, 7, 11)  # 1155 elements: 32 chunks
FLAT_CHUNK = 4  # elements per chunk of the flat inputs below
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
    assert threads_for(-(-x.numel() // CHUNK), 3) == 3  # the test splits the work
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


def recording_pass(seen: list[tuple[int, int]], caller: int, helped: threading.Event) -> cpu_chunks.ChunkPass:
    """``update_pass`` that records (thread id, chunk index) per call; the caller's first chunk waits until
    another thread has computed one (so the test cannot pass by the caller doing all the work)."""

    def chunk_pass(x: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        me = threading.get_ident()
        if me == caller and not seen:
            helped.wait(timeout=10)
        seen.append((me, int(x[0].item()) // FLAT_CHUNK))
        if me != caller:
            helped.set()
        return update_pass(x, *args, **kwargs)

    return chunk_pass


def flat_inputs(numel: int) -> tuple[torch.Tensor, torch.Tensor, Sequence[float], torch.Tensor, torch.Tensor]:
    x = torch.arange(numel, dtype=torch.float32)
    return x, x.flip(0), (0.5, -0.25, 1.5, 0.75, 2.0, 0.0), torch.empty(numel), torch.empty(numel)


def test_threads_take_runs_of_consecutive_chunks_each_once() -> None:
    chunks = 3 * MIN_CHUNKS_PER_THREAD + 1
    x, m, c, prev, x0 = flat_inputs(chunks * FLAT_CHUNK - 2)  # a ragged last chunk
    seen: list[tuple[int, int]] = []
    helped = threading.Event()
    terms = update_terms("epsilon", False, False)
    chunk_pass = recording_pass(seen, threading.get_ident(), helped)
    update_in_chunks(
        chunk_pass, x, m, None, c, terms, X0Transform(), None, prev, x0, work=x.dtype, chunk=FLAT_CHUNK, threads=3
    )
    assert helped.is_set()
    assert sorted(i for _, i in seen) == list(range(chunks))
    by_thread: dict[int, list[int]] = {}
    for ident, i in seen:
        by_thread.setdefault(ident, []).append(i)
    assert 2 <= len(by_thread) <= 3
    for taken in by_thread.values():  # whole runs, each in order
        assert taken == sorted(taken)
        for start in taken[::RUN_CHUNKS]:
            assert start % RUN_CHUNKS == 0
    expected_prev, expected_x0 = update_pass(x, m, None, c, terms, X0Transform())
    assert torch.equal(prev, expected_prev) and torch.equal(x0, expected_x0)


def test_chunk_runs_hand_out_each_chunk_once_until_stopped() -> None:
    runs = ChunkRuns(2 * RUN_CHUNKS + 3)
    assert [runs.take() for _ in range(4)] == [
        range(0, RUN_CHUNKS),
        range(RUN_CHUNKS, 2 * RUN_CHUNKS),
        range(2 * RUN_CHUNKS, 2 * RUN_CHUNKS + 3),
        None,
    ]
    stopped = ChunkRuns(100)
    stopped.take()
    stopped.stop()
    assert stopped.take() is None


def test_a_failing_chunk_stops_every_thread_and_raises_in_the_caller() -> None:
    chunks = 64 * RUN_CHUNKS
    x, m, c, prev, x0 = flat_inputs(chunks * FLAT_CHUNK)
    caller, helped = threading.get_ident(), threading.Event()
    done: list[int] = []

    def failing(x: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if threading.get_ident() == caller:  # fails while the other thread is inside a run
            helped.wait(timeout=10)
            raise RuntimeError("chunk failed")
        helped.set()
        time.sleep(0.001)
        done.append(int(x[0].item()) // FLAT_CHUNK)
        return update_pass(x, *args, **kwargs)

    terms = update_terms("epsilon", False, False)
    with pytest.raises(RuntimeError, match="chunk failed"):
        update_in_chunks(
            failing, x, m, None, c, terms, X0Transform(), None, prev, x0, work=x.dtype, chunk=FLAT_CHUNK, threads=2
        )
    count = len(done)
    time.sleep(0.05)
    assert len(done) == count  # the other thread had finished when the caller raised
    assert 1 <= count <= 2 * RUN_CHUNKS  # and stopped after its run (a second one if it took it first)


@given(chunks=st.integers(1, 5000), threads=st.integers(1, 256))
def test_a_thread_is_used_per_min_chunks_up_to_the_thread_count(chunks: int, threads: int) -> None:
    used = threads_for(chunks, threads)
    assert 1 <= used <= threads
    assert used == 1 or chunks >= used * MIN_CHUNKS_PER_THREAD
    assert used == threads or chunks < (used + 1) * MIN_CHUNKS_PER_THREAD


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
    arguments: dict[str, Any] = {"work": x.dtype, "chunk": FLAT_CHUNK, "threads": 2, key: value}
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
    x, m, c, prev, x0 = flat_inputs(MIN_CHUNKS_PER_THREAD * 2 * FLAT_CHUNK)
    terms = update_terms("epsilon", False, False)
    run = (update_pass, x, m, None, c, terms, X0Transform(), None, prev, x0)
    update_in_chunks(*run, work=x.dtype, chunk=FLAT_CHUNK, threads=2)  # the parent's pool exists now
    expected = prev.clone()
    pid = os.fork()
    if pid == 0:  # the child: a pool inherited as it is would queue the second block for ever
        prev.zero_()
        update_in_chunks(*run, work=x.dtype, chunk=FLAT_CHUNK, threads=2)
        os._exit(0 if torch.equal(prev, expected) else 1)
    deadline = time.monotonic() + 30
    while (finished := os.waitpid(pid, os.WNOHANG)) == (0, 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    if finished == (0, 0):
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung")
    assert os.waitstatus_to_exitcode(finished[1]) == 0
