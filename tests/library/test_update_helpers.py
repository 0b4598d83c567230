"""The update's helpers: the per-row quantile of dynamic thresholding and the sync-free table upload."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from hypothesis import given, settings
from hypothesis import strategies as st

from ddim.device_copy import to_device_async
from ddim.thresholding import row_quantile


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 4),
    width=st.integers(1, 300),
    q=st.one_of(st.sampled_from([0.0, 0.5, 0.995, 1.0]), st.floats(0.0, 1.0)),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
    nan_row=st.one_of(st.none(), st.integers(0, 3)),
)
def test_row_quantile_equals_torch_quantile(
    rows: int, width: int, q: float, dtype: torch.dtype, seed: int, nan_row: int | None
) -> None:
    data = torch.randn(rows, width, generator=torch.Generator().manual_seed(seed), dtype=dtype).abs()
    data[:, : width // 3] = data[:, :1]  # ties
    if nan_row is not None and nan_row < rows:
        data[nan_row, width // 2] = float("nan")
    ours, theirs = row_quantile(data, q), torch.quantile(data, q, dim=1)
    assert ours.shape == (rows,) and ours.dtype == dtype
    # Bit for bit, NaN rows included (diffusers' thresholding uses torch.quantile).
    assert torch.equal(ours.isnan(), theirs.isnan())
    assert torch.equal(ours.nan_to_num(), theirs.nan_to_num())


def test_row_quantile_compiles_without_graph_break() -> None:
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: row_quantile(x, 0.995), fullgraph=True, backend="eager")
    data = torch.randn(3, 200)
    assert torch.equal(compiled(data), torch.quantile(data, 0.995, dim=1))


@pytest.mark.parametrize("q", [-0.1, 1.5, float("nan")])
def test_row_quantile_rejects_q_outside_unit_interval(q: float) -> None:
    with pytest.raises(ValueError, match=r"q=.* is out of range; a quantile must be in \[0, 1\]"):
        row_quantile(torch.ones(2, 3), q)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_to_device_async_converts_on_the_cpu(dtype: torch.dtype) -> None:
    host = torch.tensor([[0.1, -2.5, 3.0]], dtype=torch.float64)
    copied = to_device_async(host, torch.device("cpu"), dtype)
    assert copied.dtype == dtype and copied.device.type == "cpu"
    assert torch.equal(copied, host.to(dtype))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: checks the upload does not sync")
def test_to_device_async_uploads_without_a_sync() -> None:
    host = torch.randn(1001, 6, dtype=torch.float64)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        copied = to_device_async(host, torch.device("cuda"), torch.float32)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(copied.cpu(), host.float())
