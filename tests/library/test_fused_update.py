"""The fused DDIM update: fewest eager operations, exact numbers in every configuration, chunked CPU
processing, the Triton kernel (under ``TRITON_INTERPRET=1`` on the CPU, natively on CUDA), and no host
reads with a device timestep.

Expected values come from ``ddim.ddim_step`` (the step in the paper's form) in float64; that function
is itself checked against the DDIM formulas written out here (DDIM paper, eqs. 9, 12, 16),
independently of ``ddim.coefficients`` and ``ddim.prediction``.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ddim.cpu_chunks as cpu_chunks
import ddim.update as update
from ddim import DDIMScheduler, ddim_step
from ddim.coefficients import DeviceRows, HostRow
from ddim.update import torch_update

N_STEPS = 10
SHAPE = (3, 2, 5, 7)
PREDICTIONS = ("epsilon", "sample", "v_prediction")
TRANSFORMS: dict[str, dict[str, Any]] = {
    "none": {"clip_sample": False},
    "clip": {"clip_sample": True, "clip_sample_range": 0.8},
    "threshold": {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5},
}


def scheduler(prediction: str = "epsilon", transform: str = "none", **extra: Any) -> DDIMScheduler:
    s = DDIMScheduler(prediction_type=prediction, **TRANSFORMS[transform], **extra)
    s.set_timesteps(N_STEPS)
    return s


def tensors(seed: int = 0, dtype: torch.dtype = torch.float32, shape: tuple[int, ...] = SHAPE) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(shape, generator=g, dtype=torch.float64) * 1.5).to(dtype) for _ in range(3)]


def reference_step(
    s: DDIMScheduler,
    t: torch.Tensor,
    x: torch.Tensor,
    m: torch.Tensor,
    z: torch.Tensor | None,
    eta: float,
    clipped: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x_prev and x0 in float64 from the paper's formulas; ``t`` holds one timestep per batch row."""
    alphas = s.alphas_cumprod.double()
    stride = s.config.num_train_timesteps // N_STEPS
    prev_list, x0_list = [], []
    for row, step in enumerate(t.tolist()):
        a = float(alphas[step])
        ap = float(alphas[step - stride]) if step - stride >= 0 else float(s.final_alpha_cumprod)
        xr, mr = x[row].double(), m[row].double()
        kind = s.config.prediction_type
        if kind == "epsilon":
            x0, eps = (xr - math.sqrt(1 - a) * mr) / math.sqrt(a), mr
        elif kind == "sample":
            x0, eps = mr, (xr - math.sqrt(a) * mr) / math.sqrt(1 - a)
        else:
            x0 = math.sqrt(a) * xr - math.sqrt(1 - a) * mr
            eps = math.sqrt(a) * mr + math.sqrt(1 - a) * xr
        if s.config.thresholding:
            q = torch.quantile(x0.abs().reshape(-1), s.config.dynamic_thresholding_ratio)
            level = float(q.clamp(1, s.config.sample_max_value))
            x0 = x0.clamp(-level, level) / level
        elif s.config.clip_sample:
            x0 = x0.clamp(-s.config.clip_sample_range, s.config.clip_sample_range)
        if clipped and (s.config.thresholding or s.config.clip_sample):
            eps = (xr - math.sqrt(a) * x0) / math.sqrt(1 - a)
        sigma = eta * math.sqrt((1 - ap) / (1 - a) * (1 - a / ap))
        prev = math.sqrt(ap) * x0 + math.sqrt(max(1 - ap - sigma**2, 0.0)) * eps
        if z is not None:
            prev = prev + sigma * z[row].double()
        prev_list.append(prev)
        x0_list.append(x0)
    return torch.stack(prev_list), torch.stack(x0_list)


def paper_step(
    s: DDIMScheduler,
    t: torch.Tensor,
    x: torch.Tensor,
    m: torch.Tensor,
    z: torch.Tensor | None,
    eta: float,
    clipped: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``ddim.ddim_step`` in float64 with this scheduler's alphas, one timestep per batch row in ``t``."""
    alphas = s.alphas_cumprod.double()
    landing = torch.tensor([s.previous_timestep(int(step)) for step in t])
    final = torch.full_like(landing, 0, dtype=torch.float64) + float(s.final_alpha_cumprod)
    alpha_prev = torch.where(landing >= 0, alphas[landing.clamp(min=0)], final)
    shape = (-1,) + (1,) * (x.ndim - 1)
    config = s.config
    return ddim_step(
        m.double(),
        x.double(),
        alphas[t].reshape(shape),
        alpha_prev.reshape(shape),
        eta=eta,
        prediction_type=config.prediction_type,
        clip_sample_range=config.clip_sample_range if config.clip_sample and not config.thresholding else None,
        thresholding_ratio=config.dynamic_thresholding_ratio if config.thresholding else None,
        sample_max_value=config.sample_max_value,
        use_clipped_model_output=clipped,
        noise=None if z is None else z.double(),
    )


class OpCounter(TorchDispatchMode):
    """Records the ATen operations dispatched inside the block (views included)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops.append(str(func.overloadpacket.__name__))
        return func(*args, **(kwargs or {}))


# ----------------------------------------------------------------------------- fewest operations
@pytest.mark.parametrize(
    ("prediction", "transform", "eta", "expected"),
    [
        ("epsilon", "none", 0.0, 4),
        ("epsilon", "none", 1.0, 5),
        ("epsilon", "clip", 0.0, 5),
        ("epsilon", "clip", 1.0, 6),
        ("v_prediction", "none", 0.0, 4),
        ("v_prediction", "clip", 0.0, 6),
        ("sample", "none", 0.0, 2),
        ("sample", "clip", 0.0, 4),
    ],
)
def test_eager_step_dispatches_the_fewest_operations(
    prediction: str, transform: str, eta: float, expected: int
) -> None:
    s = scheduler(prediction, transform)
    x, m, z = tensors()
    step = int(s.timesteps[3])
    s.step(m, step, x, eta=eta, variance_noise=z if eta else None)  # builds the tables
    with OpCounter() as counter:
        s.step(m, step, x, eta=eta, variance_noise=z if eta else None)
    assert len(counter.ops) == expected, counter.ops


def test_half_precision_adds_only_the_casts() -> None:
    """fp16: two input casts, the four float32 operations, two output casts; no other pass."""
    s = scheduler()
    x, m, _ = tensors(dtype=torch.float16)
    t = int(s.timesteps[3])
    s.step(m, t, x)
    with OpCounter() as counter:
        out = s.step(m, t, x)
    assert counter.ops.count("_to_copy") == 4 and len(counter.ops) == 8, counter.ops
    assert out.prev_sample.dtype == out.pred_original_sample.dtype == torch.float16


# ----------------------------------------------------------------------------- numbers
TIMESTEP_KINDS = ("int", "tensor0d", "per_row")


def timestep_argument(s: DDIMScheduler, kind: str) -> tuple[Any, torch.Tensor]:
    """(what step receives, the per-row timesteps it means)."""
    if kind == "per_row":
        rows = torch.stack([s.timesteps[i] for i in (0, 4, N_STEPS - 1)])
        return rows, rows
    t = int(s.timesteps[2])
    return (t if kind == "int" else torch.tensor(t)), torch.full((SHAPE[0],), t)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("transform", list(TRANSFORMS))
@pytest.mark.parametrize("kind", TIMESTEP_KINDS)
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_step_matches_the_paper_step(prediction: str, transform: str, kind: str, eta: float) -> None:
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-5)):
        for clipped in (False, True):
            s = scheduler(prediction, transform)
            x, m, z = tensors(seed=len(kind), dtype=dtype)
            arg, per_row = timestep_argument(s, kind)
            noise = z if eta else None
            out = s.step(m, arg, x, eta=eta, use_clipped_model_output=clipped, variance_noise=noise)
            prev, x0 = paper_step(s, per_row, x, m, noise, eta, clipped)
            scale = max(float(prev.abs().max()), float(x0.abs().max()), 1.0)
            assert out.prev_sample.dtype == dtype
            torch.testing.assert_close(out.pred_original_sample.double(), x0, rtol=0, atol=tol * scale)
            torch.testing.assert_close(out.prev_sample.double(), prev, rtol=0, atol=tol * scale)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("transform", list(TRANSFORMS))
@pytest.mark.parametrize("eta", [0.0, 0.7, 1.0])
def test_paper_step_matches_the_formulas_written_out(prediction: str, transform: str, eta: float) -> None:
    s = scheduler(prediction, transform)
    x, m, z = tensors(seed=5, dtype=torch.float64)
    per_row = torch.stack([s.timesteps[i] for i in (0, 4, N_STEPS - 1)])
    noise = z if eta else None
    for clipped in (False, True):
        ours = paper_step(s, per_row, x, m, noise, eta, clipped)
        written_out = reference_step(s, per_row, x, m, noise, eta, clipped)
        for a, b in zip(ours, written_out, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_paper_step_needs_noise_when_eta_is_positive_and_refuses_a_bad_eta() -> None:
    x = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="eta > 0 needs noise"):
        ddim_step(x, x, 0.5, 0.7, eta=0.5)
    with pytest.raises(ValueError, match=r"eta=-1\.0 is out of range"):
        ddim_step(x, x, 0.5, 0.7, eta=-1.0)
    with pytest.raises(ValueError, match="prediction_type='x0' is not supported"):
        ddim_step(x, x, 0.5, 0.7, prediction_type="x0")


def test_paper_step_with_scalar_alphas_equals_the_scheduler_step() -> None:
    s = DDIMScheduler(clip_sample=False, prediction_type="v_prediction")
    s.set_timesteps(20)
    x, m, _ = tensors(seed=9)
    t = int(s.timesteps[3])
    alpha_t, alpha_prev = float(s.alphas_cumprod[t]), float(s.alphas_cumprod[s.previous_timestep(t)])
    prev, x0 = ddim_step(m, x, alpha_t, alpha_prev, prediction_type="v_prediction")
    out = s.step(m, t, x)
    assert prev.dtype == torch.float32
    torch.testing.assert_close(prev, out.prev_sample, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x0, out.pred_original_sample, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    ("prediction", "transform"), [("epsilon", "clip"), ("sample", "clip"), ("v_prediction", "none")]
)
def test_chunked_cpu_path_equals_the_single_pass(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, prediction: str, transform: str
) -> None:
    s = scheduler(prediction, transform)
    x, m, z = tensors(seed=3, dtype=dtype, shape=(2, 3, 9, 11))
    t = int(s.timesteps[1])
    whole = s.step(m, t, x, eta=1.0, variance_noise=z)
    monkeypatch.setattr(update, "CPU_CHUNK_THRESHOLD", 1)
    monkeypatch.setattr(cpu_chunks, "BLOCK_BYTES", 37 * 4)  # 37 float32 elements a thread: a ragged last chunk
    chunked = s.step(m, t, x, eta=1.0, variance_noise=z)
    for a, b in zip(whole.to_tuple(), chunked.to_tuple(), strict=True):
        assert a.dtype == b.dtype == dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_coefficient_forms_agree() -> None:
    """Six floats, a (6,) row, a (B, 6) table of rows and a gather from the table give one result."""
    s = scheduler("v_prediction", "clip")
    x, m, z = tensors()
    t = int(s.timesteps[5])
    rule = s.plan.rule(s.config, 1.0, False)
    table = rule.device_table(x.device, torch.float32)
    coefficients, terms = rule.coefficients(t, x), rule.terms
    transform = s.x0_transform()
    expected = torch_update(x, m, coefficients, terms, transform, z)
    for form in (
        DeviceRows(table[t]),
        DeviceRows(table[t].expand(SHAPE[0], 6)),
        DeviceRows(table, torch.tensor(t)),
        DeviceRows(table, torch.full((SHAPE[0],), t)),
    ):
        for a, b in zip(torch_update(x, m, form, terms, transform, z), expected, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_out_of_range_device_timestep_gives_nan_rows() -> None:
    s = scheduler()
    table = s.plan.rule(s.config, 0.0, False).device_table(torch.device("cpu"), torch.float32)
    rows = DeviceRows(table, torch.tensor([-5, 1000, 5000, 981])).rows()
    # Structural zeros (here PREV_X0, and STD at eta = 0) stay 0; every other entry is NaN.
    assert rows[:3, [0, 1, 3, 4]].isnan().all() and not rows[3].isnan().any()


def test_bad_coefficient_shapes_are_rejected() -> None:
    s = scheduler()
    x, m, _ = tensors()
    terms = s.plan.rule(s.config, 0.0, False).terms
    with pytest.raises(ValueError, match="6 values"):
        torch_update(x, m, HostRow([1.0, 2.0]), terms, s.x0_transform())
    with pytest.raises(ValueError, match="coefficient rows"):
        torch_update(x, m, DeviceRows(torch.ones(2, 2, 6)), terms, s.x0_transform())
    with pytest.raises(ValueError, match=r"2 coefficient rows for a sample of shape \(3,"):
        torch_update(x, m, DeviceRows(torch.ones(2, 6)), terms, s.x0_transform())


# ----------------------------------------------------------------------------- no host reads
@pytest.mark.parametrize("transform", ["none", "clip"])
@pytest.mark.parametrize("per_row", [False, True])
def test_device_timestep_is_never_read_on_the_host(transform: str, per_row: bool) -> None:
    """On the meta device any host read (``.item()``, ``int(t)``, ``bool(t)``) raises: none happens."""
    s = scheduler("epsilon", transform)
    x, m, z = (torch.empty(SHAPE, device="meta") for _ in range(3))
    t = torch.empty((SHAPE[0],) if per_row else (), dtype=torch.int64, device="meta")
    out = s.step(m, t, x, eta=1.0, variance_noise=z)
    assert out.prev_sample.device.type == "meta" and out.prev_sample.shape == SHAPE


# ----------------------------------------------------------------------------- Triton kernel
def triton_cases() -> list[tuple[str, str, torch.dtype]]:
    return [(p, t, d) for p in PREDICTIONS for t in TRANSFORMS for d in (torch.float32, torch.float16, torch.bfloat16)]


@pytest.fixture
def interpreted_kernel(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The Triton launcher with the kernel built for the interpreter (CPU tensors)."""
    pytest.importorskip("triton", reason="triton is not installed (a test dependency on Linux x86-64)")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    from ddim.kernels import triton_update

    triton_update.kernel.cache_clear()
    yield triton_update.fused_update
    triton_update.kernel.cache_clear()


@pytest.mark.parametrize(("prediction", "transform", "dtype"), triton_cases())
def test_triton_kernel_matches_the_torch_path_interpreted(
    interpreted_kernel: Any, prediction: str, transform: str, dtype: torch.dtype
) -> None:
    kernel_vs_torch(interpreted_kernel, torch.device("cpu"), prediction, transform, dtype)


def kernel_vs_torch(launch: Any, device: torch.device, prediction: str, transform: str, dtype: torch.dtype) -> None:
    s = scheduler(prediction, transform)
    x, m, z = (v.to(device) for v in tensors(seed=5, dtype=dtype))
    tr = s.x0_transform()
    for eta, clipped in ((0.0, False), (1.0, True)):
        rule = s.plan.rule(s.config, eta, clipped)
        table = rule.device_table(device, torch.float32)
        terms = rule.terms
        floats = rule.host_rows[int(s.timesteps[2])]
        noise = z if eta else None
        per_row = torch.stack([s.timesteps[i] for i in (0, 4, N_STEPS - 1)]).to(device)
        for form in (floats, DeviceRows(table[int(s.timesteps[2])]), DeviceRows(table, per_row)):
            got = launch(x, m, form, tr, noise)
            want = torch_update(x, m, form, terms, tr, noise)
            for a, b in zip(got, want, strict=True):
                assert a.dtype == dtype and a.shape == SHAPE
                tol = 1e-5 if dtype == torch.float32 else float(torch.finfo(dtype).eps)
                scale = max(float(b.abs().max()), 1.0)
                torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol * scale)


needs_cuda_triton = pytest.mark.skipif(
    not torch.cuda.is_available() or not __import__("ddim.kernels").kernels.triton_installed(),
    reason="needs CUDA and Triton",
)


@needs_cuda_triton
@pytest.mark.parametrize(("prediction", "transform", "dtype"), triton_cases())
def test_triton_kernel_matches_the_torch_path_on_cuda(prediction: str, transform: str, dtype: torch.dtype) -> None:
    from ddim.kernels.triton_update import fused_update

    kernel_vs_torch(fused_update, torch.device("cuda"), prediction, transform, dtype)


@needs_cuda_triton
def test_cuda_step_is_one_launch_without_syncs() -> None:
    s = DDIMScheduler()
    s.set_timesteps(50, device="cuda")
    x = torch.randn(2, 4, 32, 32, device="cuda", dtype=torch.float16)
    g = torch.Generator(device="cuda").manual_seed(0)
    s.step(x, s.timesteps[0], x, eta=1.0, generator=g)  # tables and kernels compiled
    s.step(x, s.timesteps[0], x)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for t in s.timesteps[:5]:
                x = s.step(x, t, x).prev_sample
            torch.cuda.synchronize()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert len([e for e in kernels if "ddim_step_kernel" in e.name]) == 5
    assert len(kernels) == 5, [e.name for e in kernels]
