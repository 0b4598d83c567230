"""Reused CPU output buffers: a freed buffer's pages serve the next output of its size, a buffer still referred
to (by any view) never does, the free list is bounded and can be emptied, a forked child's writes stay its own,
and the step's large outputs come from the list with unchanged numbers."""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Iterator

import pytest
import torch

import ddim.cpu_buffers as cpu_buffers
import ddim.update as update
from ddim import DDIMScheduler
from ddim.cpu_buffers import FREE, MIN_BYTES, empty_cpu, release_cpu_buffers

pytestmark = pytest.mark.skipif(not cpu_buffers.MAPPINGS, reason="reused buffers need POSIX private mappings")
LARGE = (MIN_BYTES // 4,)  # float32 elements of the smallest reused buffer


@pytest.fixture(autouse=True)
def empty_free_list() -> Iterator[None]:
    gc.collect()
    release_cpu_buffers()
    yield
    gc.collect()
    release_cpu_buffers()


def test_a_freed_buffer_serves_the_next_output_of_its_size() -> None:
    first = empty_cpu(LARGE, torch.float32)
    first.fill_(3.0)
    address = first.data_ptr()
    del first
    assert FREE.count == 1
    again = empty_cpu(LARGE, torch.float32)
    assert again.data_ptr() == address and FREE.count == 0
    assert again.shape == LARGE and again.dtype == torch.float32 and again.is_contiguous()


def test_a_buffer_with_a_live_view_is_not_reused() -> None:
    first = empty_cpu(LARGE, torch.float32)
    first.fill_(1.0)
    view = first[10:20]
    address = first.data_ptr()
    del first
    assert FREE.count == 0
    other = empty_cpu(LARGE, torch.float32)
    other.fill_(2.0)
    assert other.data_ptr() != address and torch.equal(view, torch.ones(10))
    del view
    assert FREE.count == 1


def test_a_buffer_freed_in_another_thread_comes_back() -> None:
    holder = [empty_cpu(LARGE, torch.float32)]
    worker = threading.Thread(target=holder.clear)
    worker.start()
    worker.join()
    assert FREE.count == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes_and_shapes_view_the_buffer(dtype: torch.dtype) -> None:
    shape = (2, 8, MIN_BYTES // (16 * dtype.itemsize))
    buffer = empty_cpu(shape, dtype)
    buffer.copy_(torch.arange(buffer.numel()).reshape(shape).to(dtype))
    assert buffer.shape == shape and buffer.dtype == dtype
    assert torch.equal(buffer, torch.arange(buffer.numel()).reshape(shape).to(dtype))


def test_small_buffers_are_plain_tensors() -> None:
    small = empty_cpu((MIN_BYTES // 4 - 1,), torch.float32)
    assert small.untyped_storage().resizable()
    del small
    assert FREE.count == 0


def test_the_free_list_is_bounded_and_can_be_emptied() -> None:
    buffers = [empty_cpu(LARGE, torch.float32) for _ in range(cpu_buffers.MAX_FREE + 2)]
    del buffers
    assert FREE.count == cpu_buffers.MAX_FREE
    assert release_cpu_buffers() == cpu_buffers.MAX_FREE * MIN_BYTES
    assert FREE.count == 0 and release_cpu_buffers() == 0


def test_the_free_list_keeps_at_most_its_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_buffers, "MAX_FREE_BYTES", 3 * MIN_BYTES)
    buffers = [empty_cpu((MIN_BYTES // 2,), torch.float32) for _ in range(3)]  # 2 MIN_BYTES each
    del buffers
    assert FREE.count == 1 and FREE.nbytes == 2 * MIN_BYTES


def test_without_private_mappings_buffers_are_plain_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_buffers, "MAPPINGS", False)
    plain = empty_cpu(LARGE, torch.float32)
    assert plain.untyped_storage().resizable()
    del plain
    assert FREE.count == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_childs_writes_stay_in_the_child() -> None:
    shared = empty_cpu(LARGE, torch.float32)
    shared.fill_(1.0)
    kept = empty_cpu(LARGE, torch.float32)
    del kept  # a free buffer the child reuses
    pid = os.fork()
    if pid == 0:
        try:
            torch.set_num_threads(1)  # the parent's OpenMP threads do not exist here
            shared.fill_(2.0)
            reused = empty_cpu(LARGE, torch.float32)
            reused.fill_(5.0)
            os._exit(0 if float(shared[0]) == 2.0 else 1)
        finally:
            os._exit(3)
    deadline = time.monotonic() + 30
    while (finished := os.waitpid(pid, os.WNOHANG)) == (0, 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    if finished == (0, 0):
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung")
    assert os.waitstatus_to_exitcode(finished[1]) == 0
    assert torch.equal(shared, torch.ones(LARGE))
    assert FREE.count == 1
    parents = empty_cpu(LARGE, torch.float32)
    assert FREE.count == 0 and parents.numel() == LARGE[0]


def test_the_steps_large_outputs_reuse_freed_buffers_with_unchanged_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    s = DDIMScheduler()
    s.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x, m = (torch.randn(2, 4, 512, 512, generator=g) for _ in range(2))  # 2M elements: chunked, outputs reused
    t = int(s.timesteps[3])
    assert x.numel() >= update.CPU_CHUNK_THRESHOLD
    first = s.step(m, t, x)
    addresses = {first.prev_sample.data_ptr(), first.pred_original_sample.data_ptr()}
    expected = tuple(a.clone() for a in first.to_tuple())
    del first
    assert FREE.count == 2
    second = s.step(m, t, x)
    assert FREE.count == 0
    assert {second.prev_sample.data_ptr(), second.pred_original_sample.data_ptr()} == addresses
    monkeypatch.setattr(update, "CPU_CHUNK_THRESHOLD", x.numel() + 1)
    whole = s.step(m, t, x)
    for a, b, c in zip(expected, second.to_tuple(), whole.to_tuple(), strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_a_reused_buffer_cannot_grow_as_documented() -> None:
    buffer = empty_cpu(LARGE, torch.float32)
    assert not buffer.untyped_storage().resizable()
    with pytest.raises(RuntimeError, match="not resizable"):
        buffer.resize_(2 * LARGE[0])
    assert buffer.resize_(10).shape == (10,)
