"""The checked direct launch of the fused step kernel, on the CPU: the kernel runs in Triton's interpreter
and a stand-in "compiled kernel" receives the launcher's call (grid, stream, function, metadata, hooks,
then every argument in parameter order) and runs the interpreted kernel with it. A correct stand-in gets
bound after one checked call; a wrong or failing one leaves the key on the JIT path for good, and every
result still equals the torch path."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from ddim import DDIMScheduler
from ddim.kernels.direct_launch import DirectLauncher, alignment_bits, bitwise_equal, hooks_installed, int_class

pytest.importorskip("triton", reason="triton is not installed (a test dependency on Linux x86-64)")


class StandInCompiled:
    """What ``kernel[grid](...)`` returns on CUDA, reduced to what a binding uses; ``run`` launches the
    interpreted kernel with the positional layout of Triton's launcher (``corrupt`` edits the arguments)."""

    function = "function-handle"
    packed_metadata = "packed-metadata"

    def __init__(self, jitted: Any, constexprs: tuple[str, ...], corrupt: Callable[[list[Any]], None] | None) -> None:
        self.jitted, self.constexprs, self.corrupt, self.calls = jitted, constexprs, corrupt, 0

    def run(self, gx: int, gy: int, gz: int, stream: Any, function: Any, metadata: Any, *rest: Any) -> None:
        assert (stream, function, metadata) == ("stream-0", self.function, self.packed_metadata)
        launch_metadata, enter, exit_, *arguments = rest
        assert (launch_metadata, enter, exit_) == (None, None, None)
        self.calls += 1
        if self.corrupt is not None:
            self.corrupt(arguments)
        split = len(arguments) - len(self.constexprs)
        self.jitted[(gx, gy, gz)](*arguments[:split], **dict(zip(self.constexprs, arguments[split:], strict=True)))


class StandInJitted:
    """``kernel[grid](...)``: the interpreted launch, returning the stand-in compiled kernel."""

    def __init__(self, jitted: Any, compiled: StandInCompiled) -> None:
        self.jitted, self.compiled, self.arg_names, self.jit_calls = jitted, compiled, jitted.arg_names, 0

    def __getitem__(self, grid: tuple[int, ...]) -> Callable[..., StandInCompiled]:
        def launch(*args: Any, **kwargs: Any) -> StandInCompiled:
            self.jit_calls += 1
            self.jitted[grid](*args, **kwargs)
            return self.compiled

        return launch


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> Callable[..., tuple[DirectLauncher, StandInJitted]]:
    """Route the fused update's launches through a DirectLauncher over the stand-in (interpreted kernel)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    from ddim.kernels import triton_update

    triton_update.kernel.cache_clear()

    def make(corrupt: Callable[[list[Any]], None] | None = None, hooks: bool = False) -> tuple[Any, Any]:
        jitted = triton_update.kernel()
        fake = StandInJitted(jitted, StandInCompiled(jitted, triton_update.CONSTEXPRS, corrupt))
        launcher = DirectLauncher(fake, triton_update.CONSTEXPRS)
        chain = SimpleNamespace(calls=[print] if hooks else [])
        launcher.device, launcher.stream = (lambda: 0), (lambda device: f"stream-{device}")
        launcher.runtime = SimpleNamespace(launch_enter_hook=chain, launch_exit_hook=SimpleNamespace(calls=[]))
        launcher.synchronize, launcher.checkable = (lambda: None), (lambda: True)
        monkeypatch.setattr(triton_update, "launcher", lambda: launcher)
        return launcher, fake

    yield make
    triton_update.kernel.cache_clear()


def steps(n: int, eta: float = 1.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` fused steps (clipped x0, a host timestep) and the same steps on the torch path."""
    from ddim.kernels.triton_update import fused_update
    from ddim.update import torch_update

    s = DDIMScheduler(clip_sample=True)
    s.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x, m, z = (torch.randn(2, 3, 8, 8, generator=g) for _ in range(3))
    transform = s.x0_transform()
    rule = s.plan.rule(s.config, eta, False)
    coefficients, terms = rule.coefficients(int(s.timesteps[3]), x), rule.terms
    got = [fused_update(x, m, coefficients, transform, z) for _ in range(n)]
    want = torch_update(x, m, coefficients, terms, transform, z)
    for prev, x0 in got:
        torch.testing.assert_close(prev, want[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(x0, want[1], rtol=1e-5, atol=1e-5)
    return got


def test_a_correct_launcher_is_bound_after_one_checked_call(stand_in: Any) -> None:
    launcher, fake = stand_in()
    steps(4)
    # call 1: JIT launch + one checked direct launch; calls 2-4: direct only
    assert launcher.counts() == {"direct": 1, "fallback": 0}
    assert (fake.jit_calls, fake.compiled.calls) == (1, 4)


def test_a_launcher_that_writes_other_numbers_is_never_used(stand_in: Any) -> None:
    def swap_inputs(arguments: list[Any]) -> None:
        arguments[0], arguments[1] = arguments[1], arguments[0]

    launcher, fake = stand_in(corrupt=swap_inputs)
    steps(3)  # every result equals the torch path (checked inside)
    assert launcher.counts() == {"direct": 0, "fallback": 1}
    assert (fake.jit_calls, fake.compiled.calls) == (3, 1)


def test_a_launcher_that_raises_falls_back_for_good(stand_in: Any) -> None:
    def fail(arguments: list[Any]) -> None:
        raise IndexError("tuple index out of range")

    launcher, fake = stand_in(corrupt=fail)
    steps(3)
    assert launcher.counts() == {"direct": 0, "fallback": 1}
    assert fake.jit_calls == 3


def test_installed_launch_hooks_keep_the_jit_path(stand_in: Any) -> None:
    launcher, fake = stand_in(hooks=True)
    steps(3)
    assert fake.compiled.calls == 0 and fake.jit_calls == 3 and launcher.counts() == {"direct": 0, "fallback": 0}


def test_unreadable_results_postpone_binding(stand_in: Any) -> None:
    launcher, fake = stand_in()
    launcher.checkable = lambda: False  # as during a graph capture or under forbidden syncs
    steps(2)
    assert launcher.counts() == {"direct": 0, "fallback": 0} and fake.compiled.calls == 0
    launcher.checkable = lambda: True
    steps(2)
    assert launcher.counts() == {"direct": 1, "fallback": 0} and fake.compiled.calls == 2


def test_the_key_follows_every_specialisation() -> None:
    assert int_class(1) == (True, False, True)
    assert int_class(32) == (False, True, True)
    assert int_class(2**31) == (False, True, False)
    base = torch.zeros(64)
    assert alignment_bits([base, base[1:], base[4:]]) == 0b101  # 4-byte offset unaligned, 16-byte aligned
    nan = torch.tensor([float("nan"), 1.0])
    assert bitwise_equal(nan, nan.clone()) and not bitwise_equal(nan, torch.tensor([float("nan"), 2.0]))
    assert not bitwise_equal(nan, nan.double())


def test_a_new_alignment_is_a_new_binding(stand_in: Any) -> None:
    from ddim.kernels.triton_update import fused_update

    launcher, _ = stand_in()
    s = DDIMScheduler()
    s.set_timesteps(10)
    buffer = torch.randn(2 * 64 + 1)
    transform = s.x0_transform()
    coefficients = s.plan.rule(s.config, 0.0, False).coefficients(int(s.timesteps[3]), buffer[:64])
    for start in (0, 1, 0):
        x = buffer[start : start + 64]
        fused_update(x, x, coefficients, transform)
    assert launcher.counts() == {"direct": 2, "fallback": 0}


def test_hooks_are_read_from_triton_hook_chains() -> None:
    empty = SimpleNamespace(calls=[])
    assert not hooks_installed(SimpleNamespace(launch_enter_hook=empty, launch_exit_hook=None))
    assert hooks_installed(SimpleNamespace(launch_enter_hook=empty, launch_exit_hook=SimpleNamespace(calls=[print])))
    assert hooks_installed(SimpleNamespace(launch_enter_hook=print, launch_exit_hook=None))


@pytest.mark.skipif(
    not torch.cuda.is_available() or not __import__("ddim.kernels").kernels.triton_installed(),
    reason="needs CUDA and Triton",
)
def test_direct_launch_on_cuda_binds_and_equals_the_torch_path() -> None:
    """With the installed Triton the compiled kernel's launcher is bound (no fallback) and a step
    through it equals the torch path, for host and device timesteps, with and without noise."""
    import ddim.kernels
    from ddim.kernels import triton_update

    s = DDIMScheduler(clip_sample=True)
    s.set_timesteps(50, device="cuda")
    x, m, z = (torch.randn(1, 4, 64, 64, device="cuda") for _ in range(3))
    for t in (int(s.timesteps[7]), s.timesteps[7], s.timesteps[8]):
        for noise in (None, z):
            for _ in range(3):
                got = s.step(m, t, x, eta=1.0 if noise is not None else 0.0, variance_noise=noise).prev_sample
            ddim.kernels.ENABLED = False
            try:
                want = s.step(m, t, x, eta=1.0 if noise is not None else 0.0, variance_noise=noise).prev_sample
            finally:
                ddim.kernels.ENABLED = True
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    counts = triton_update.launcher().counts()
    assert counts["direct"] >= 4 and counts["fallback"] == 0, counts
