"""Launch a compiled Triton kernel through its launcher, skipping the JIT's per-call binding work.

``kernel[grid](*args)`` (Triton's JIT path) binds the arguments, computes their specialisation and a
cache key, looks the compiled kernel up and then calls its launcher: 20-30 us of host time per call
at Triton 3.6. A :class:`DirectLauncher` does that work once per *binding key* (the current device,
every argument's specialisation: pointer dtype and 16-byte alignment, integer classes, the
compile-time constants) and afterwards calls the compiled kernel's launcher itself, with the
arguments in the kernel's parameter order, as ``JITFunction.run`` does (Triton 3.6 to 3.8)::

    compiled.run(grid_x, grid_y, grid_z, stream, compiled.function, compiled.packed_metadata,
                 launch_metadata, enter_hook, exit_hook, *arguments)

Checked fallback: the first call of a key launches through the JIT (its result is the call's
result), then launches the compiled kernel directly into scratch outputs and compares them bit for
bit with the JIT's; only a match enables the direct path for that key. Any exception while binding,
or a mismatch, makes the JIT path permanent for the key: never a wrong result. Binding is not
attempted while a CUDA graph is being captured or while synchronisation is forbidden (the check
reads the result on the host); those calls take the JIT path and binding waits for a later call.
Triton's launch hooks (profilers) are honoured: with a hook installed every call takes the JIT path.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch

#: Whether launches may bypass the JIT (``DDIM_DIRECT_LAUNCH=0`` in the environment turns it off).
ENABLED: bool = os.environ.get("DDIM_DIRECT_LAUNCH", "1") != "0"
INT32_MAX = 2**31 - 1


def int_class(value: int) -> tuple[bool, bool, bool]:
    """What Triton specialises an integer argument on: equal to 1, divisible by 16, fits in int32."""
    return value == 1, value % 16 == 0, -INT32_MAX - 1 <= value <= INT32_MAX


def alignment_bits(tensors: Sequence[torch.Tensor]) -> int:
    """Bit i set when tensor i's data pointer is 16-byte aligned (Triton specialises pointers on it)."""
    bits = 0
    for i, tensor in enumerate(tensors):
        if tensor.data_ptr() % 16 == 0:
            bits |= 1 << i
    return bits


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors hold the same bytes (NaN payloads included)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (no compiled kernel, no launcher)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


class Binding:
    """A compiled kernel's launcher with its function handle and packed metadata."""

    __slots__ = ("function", "metadata", "run")

    def __init__(self, compiled: Any) -> None:
        self.run: Callable[..., Any] = compiled.run
        self.function: Any = compiled.function
        self.metadata: Any = compiled.packed_metadata

    def __call__(self, grid: tuple[int, int, int], stream: Any, arguments: Sequence[Any]) -> None:
        self.run(grid[0], grid[1], grid[2], stream, self.function, self.metadata, None, None, None, *arguments)


class DirectLauncher:
    """Checked direct launches of one jitted kernel (see the module doc).

    ``launch(key, grid, arguments, outputs, num_warps)``: ``arguments`` are all the kernel's parameters
    in order (compile-time constants included, at their positions); ``outputs`` are the positions of
    the tensors the kernel writes (replaced by scratch tensors for the check); ``key`` must determine
    every argument's Triton specialisation (the caller builds it; the current device is added here).
    """

    def __init__(self, jitted: Any, constexpr_names: Sequence[str]) -> None:
        self.jitted = jitted
        self.names: tuple[str, ...] = tuple(getattr(jitted, "arg_names", ()))
        self.constexpr_names = tuple(constexpr_names)
        self.bindings: dict[Hashable, Binding | None] = {}
        # Triton's and torch's device accessors, read by prepare() (replaceable: the tests use fakes).
        self.stream: Callable[[int], Any] = unprepared
        self.device: Callable[[], int] | None = None
        self.runtime: Any = None
        self.synchronize: Callable[[], None] = torch.cuda.synchronize
        self.checkable: Callable[[], bool] = results_readable

    def jit_launch(self, grid: tuple[int, int, int], arguments: Sequence[Any], num_warps: int) -> Any:
        """Launch through ``kernel[grid]`` (runtime arguments positional, constants by name)."""
        split = len(arguments) - len(self.constexpr_names)
        constants = dict(zip(self.constexpr_names, arguments[split:], strict=True))
        return self.jitted[grid](*arguments[:split], **constants, num_warps=num_warps)

    def launch(
        self,
        key: Hashable,
        grid: tuple[int, int, int],
        arguments: Sequence[Any],
        outputs: Sequence[int],
        num_warps: int,
    ) -> None:
        """One launch: direct when the key is bound and verified, else through the JIT (binding on first use)."""
        if not ENABLED or (self.device is None and not self.prepare()):
            self.jit_launch(grid, arguments, num_warps)
            return
        device = self.device()  # type: ignore[misc]  # set by prepare()
        full_key = (device, key)
        binding = self.bindings.get(full_key, False)
        if binding is False:
            self.bind(full_key, grid, arguments, outputs, num_warps)
        elif binding is None or hooks_installed(self.runtime):
            self.jit_launch(grid, arguments, num_warps)
        else:
            binding(grid, self.stream(device), arguments)  # type: ignore[operator]

    def prepare(self) -> bool:
        """Read Triton's device and stream accessors once; ``False`` where no direct launch is possible."""
        if interpreting() or len(self.names) == 0:
            return False
        try:
            from triton import knobs
            from triton.runtime import driver

            active = driver.active
            self.stream, self.device, self.runtime = active.get_current_stream, active.get_current_device, knobs.runtime
        except Exception:
            return False
        return True

    def bind(
        self,
        key: Hashable,
        grid: tuple[int, int, int],
        arguments: Sequence[Any],
        outputs: Sequence[int],
        num_warps: int,
    ) -> None:
        """JIT launch (the call's result), then a checked direct launch into scratch outputs (module doc)."""
        checkable = self.checkable()
        compiled = self.jit_launch(grid, arguments, num_warps)
        if not checkable or hooks_installed(self.runtime):
            return  # bind on a later call
        try:
            if len(arguments) != len(self.names):
                raise TypeError(f"{len(arguments)} arguments for {len(self.names)} parameters")
            binding = Binding(compiled)
            scratch = list(arguments)
            for i in outputs:
                scratch[i] = torch.empty_like(arguments[i])
            binding(grid, self.stream(key[0]), scratch)  # type: ignore[index]
            self.synchronize()
            same = all(bitwise_equal(scratch[i], arguments[i]) for i in outputs)
        except Exception:
            same = False
        self.bindings[key] = binding if same else None

    def counts(self) -> dict[str, int]:
        """How many keys are bound (direct) and how many fell back to the JIT for good."""
        bound = sum(1 for b in self.bindings.values() if b is not None)
        return {"direct": bound, "fallback": len(self.bindings) - bound}


def hooks_installed(runtime: Any) -> bool:
    """Whether a Triton launch hook (a profiler's) is installed in ``triton.knobs.runtime``: then every
    launch goes through the JIT. Triton 3.6-3.8 hold hook chains (installed: a non-empty ``calls``)."""
    return any(
        hook is not None and bool(getattr(hook, "calls", True))
        for hook in (runtime.launch_enter_hook, runtime.launch_exit_hook)
    )


def results_readable() -> bool:
    """Whether the host may read a result now: no CUDA graph capture, synchronisation not forbidden."""
    return not torch.cuda.is_current_stream_capturing() and torch.cuda.get_sync_debug_mode() == 0


def unprepared(device: int) -> Any:
    """The stream accessor before :meth:`DirectLauncher.prepare` ran (never called)."""
    raise RuntimeError("DirectLauncher.prepare() has not run")
