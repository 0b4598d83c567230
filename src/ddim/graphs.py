"""Whole-loop CUDA-graph capture of DDIM sampling: N x (model + step) recorded once, replayed per batch.

A DDIM step is cheap on the GPU; its cost in an eager loop is launch overhead and, in diffusers, host
syncs. With the timestep a device tensor, ``DDIMScheduler.step`` never reads a value on the host (one
fused kernel, coefficients gathered on the device), so the whole loop can be captured in a
``torch.cuda.CUDAGraph`` and replayed with no Python in the loop. Recipe (what :class:`GraphedSampler`
does)::

    scheduler.set_timesteps(50, device="cuda")         # device timesteps and coefficient tables
    plan = SamplingPlan.build(scheduler, batch_size)   # per-step model timesteps, made before capture
    x = torch.empty(shape, device="cuda")              # static input, filled with x_T before each replay
    run_steps(model, scheduler, x, plan, eta)          # warm-up (side stream): tables, kernels, cuDNN
    with torch.cuda.graph(graph):                      # capture; generators registered first
        out = run_steps(model, scheduler, x, plan, eta, generator)
    x.copy_(x_T); graph.replay(); samples = out.clone()

Conditioning: the model's extra inputs (observation features, class labels, text embeddings) are
given once as example tensors (``extra_inputs={"global_cond": obs}``); the graph reads them from
static buffers, which each call fills: ``sampler(x_T, global_cond=obs)`` runs
``model(x, t, global_cond=obs)`` at every step. Any such callable can be graphed, a guided one too
(classifier-free guidance: one function that runs the conditional and unconditional passes and
combines them), as long as it reads nothing on the host.

Noise for eta > 0 comes from CUDA generators (one, or one per batch row) registered with the graph:
each replay draws fresh noise and advances them, and re-seeding a generator before a replay makes
that replay reproducible. A CPU generator cannot feed a graph (its draws are host work and a copy).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ddim.model import Model, ModelWrapper, after_step, predict
from ddim.noise import Generator
from ddim.plan import GridStep
from ddim.sampling import renoise_keyword
from ddim.scheduler_protocol import DDIMSchedulerLike
from ddim.validation import ArgumentTypeError, ArgumentValueError, check_int

#: A model with extra inputs: ``model(x_t, t, **extra) -> prediction`` (t: (batch,), int64).
ConditionedModel = Callable[..., torch.Tensor]


class GraphableScheduler(Protocol):
    """What a CUDA-graphed loop needs of a scheduler: its grid and a diffusers-style ``step``.

    ``ddim.DDIMScheduler`` and ``ddim.diffusers.DDIMScheduler`` provide it (and diffusers' own
    ``DDIMScheduler`` does too, though its step reads the timestep on the host and cannot be captured).
    """

    timesteps: torch.Tensor
    num_inference_steps: int | None

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None: ...

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """A diffusers-style step taking ``eta``, ``use_clipped_model_output``, ``generator``, ``return_dict``."""


@dataclass(frozen=True)
class SamplingPlan:
    """What the loop indexes, made before capture: the step timesteps (0-dim device views) and the
    model's per-row timesteps (``model_timesteps[i]`` has shape (batch,), int64)."""

    step_timesteps: tuple[torch.Tensor, ...]
    model_timesteps: torch.Tensor

    @classmethod
    def build(
        cls, scheduler: GraphableScheduler, batch_size: int, device: torch.device | str | None = None
    ) -> SamplingPlan:
        """Plan for ``scheduler.timesteps`` (after ``set_timesteps``) on ``device`` (default: theirs)."""
        if scheduler.num_inference_steps is None:
            raise ArgumentValueError("scheduler has no timesteps; call scheduler.set_timesteps(n, device=...) first")
        check_int("batch_size", batch_size, minimum=1)
        timesteps = scheduler.timesteps
        steps = timesteps.to(device if device is not None else timesteps.device, torch.int64)
        model_timesteps = steps.unsqueeze(1).expand(len(steps), batch_size).contiguous()
        return cls(tuple(steps.unbind(0)), model_timesteps)


def run_steps(
    model: Model | ConditionedModel,
    scheduler: GraphableScheduler,
    x: torch.Tensor,
    plan: SamplingPlan,
    eta: float = 0.0,
    generator: Generator = None,
    use_clipped_model_output: bool = False,
    extra: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """x_T -> x_0: ``x = scheduler.step(model(x, t_batch, **extra), t, x).prev_sample`` for every planned step.

    A model wrapper (``ddim.guidance``, ``ddim.inpainting``) is stepped as ``ddim.sample`` steps it: CFG++'s
    renoise output goes to the step, inpainting corrects the sample after it (both need a scheduler of this
    package, whose plan gives each step's landing). Reads nothing on the host when the plan, ``x`` and the
    generators are on the GPU, so it can be captured in a CUDA graph; on the CPU it is the plain loop.
    """
    inputs = dict(extra) if extra is not None else {}
    steps = wrapper_steps(model, scheduler)
    last = len(plan.step_timesteps) - 1
    for index, (t, t_batch) in enumerate(zip(plan.step_timesteps, plan.model_timesteps, strict=True)):
        prediction = predict(model, x, t_batch, **inputs)
        x = scheduler.step(
            prediction.output,
            t,
            x,
            eta=eta,
            use_clipped_model_output=use_clipped_model_output,
            generator=generator,
            return_dict=False,
            **renoise_keyword(prediction),
        )[0]
        if steps is not None:
            x = after_step(model, x, steps[index], index == last, generator)
    return x


def wrapper_steps(model: object, scheduler: object) -> tuple[GridStep, ...] | None:
    """The plan's steps a wrapper's after-step correction reads (``None`` for a plain model)."""
    if not isinstance(model, ModelWrapper):
        return None
    if not isinstance(scheduler, DDIMSchedulerLike):
        wrapper, given = type(model).__name__, type(scheduler).__name__
        raise ArgumentTypeError(f"a model wrapper ({wrapper}) needs a scheduler of this package, got {given}")
    return scheduler.plan.grid_steps()


@contextlib.contextmanager
def forbid_syncs() -> Iterator[None]:
    """Make any host-device synchronisation raise (``torch.cuda.set_sync_debug_mode("error")``) inside."""
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def cuda_generators(generator: Generator, device: torch.device) -> list[torch.Generator]:
    """The generators as a list, each checked to be a CUDA generator of ``device``'s type."""
    if generator is None:
        return []
    found = [generator] if isinstance(generator, torch.Generator) else list(generator)
    for g in found:
        if not isinstance(g, torch.Generator):
            raise ArgumentTypeError(f"generator must be a torch.Generator or a list of them, got {type(g).__name__}")
        if g.device.type != device.type:
            raise ArgumentValueError(
                f"generator on {g.device} cannot feed a CUDA graph on {device}; "
                f"use torch.Generator(device={str(device)!r})"
            )
    return found


class StaticInputs:
    """The model's extra inputs as static buffers of a graph: made from example tensors, filled per call.

    ``StaticInputs({"global_cond": obs}, device)`` copies each example into a new buffer on
    ``device``; :meth:`fill` copies a call's tensors into them after checking that the names, shapes
    and dtypes match the examples (a graph reads the same memory at every replay).
    """

    def __init__(self, examples: Mapping[str, torch.Tensor] | None, device: torch.device | str) -> None:
        self.buffers: dict[str, torch.Tensor] = {}
        for name, example in (examples or {}).items():
            if not isinstance(name, str) or not name.isidentifier():
                raise ArgumentValueError(f"extra_inputs key {name!r} must be a Python identifier (a keyword)")
            if not isinstance(example, torch.Tensor):
                raise ArgumentTypeError(f"extra_inputs[{name!r}] must be a torch.Tensor, got {type(example).__name__}")
            self.buffers[name] = example.detach().to(device, copy=True)

    def fill(self, values: Mapping[str, torch.Tensor]) -> None:
        """Copy a call's extra inputs into the buffers (every captured name, nothing else, same shape and dtype)."""
        if set(values) != set(self.buffers):
            raise ArgumentValueError(
                f"extra inputs {sorted(values)} must be exactly the captured {sorted(self.buffers)}"
            )
        for name, value in values.items():
            buffer = self.buffers[name]
            if not isinstance(value, torch.Tensor):
                raise ArgumentTypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
            if value.shape != buffer.shape or value.dtype != buffer.dtype:
                raise ArgumentValueError(
                    f"{name} has shape {tuple(value.shape)} and dtype {value.dtype}; the graph was captured with "
                    f"shape {tuple(buffer.shape)} and dtype {buffer.dtype}"
                )
        for name, value in values.items():
            self.buffers[name].copy_(value)


class GraphedSampler:
    """A DDIM sampling loop (model + step, ``num_inference_steps`` times) captured in one CUDA graph.

    ``sampler(x_T, **extra)`` copies ``x_T`` and the extra inputs into the graph's static buffers,
    replays, and returns x_0 (a new tensor). The scheduler's timesteps are set here on ``device``;
    the model is called as ``model(x_t, t, **extra)`` with t of shape (batch,), int64, and ``extra``
    the buffers made from ``extra_inputs`` (example tensors: their shapes and dtypes are fixed).
    Warm-up and capture run under :func:`forbid_syncs` when ``check_syncs`` (a sync would also break
    the capture).
    """

    def __init__(
        self,
        model: Model | ConditionedModel,
        scheduler: GraphableScheduler,
        shape: Sequence[int],
        *,
        extra_inputs: Mapping[str, torch.Tensor] | None = None,
        num_inference_steps: int = 50,
        eta: float = 0.0,
        generator: Generator = None,
        use_clipped_model_output: bool = False,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cuda",
        warmup_runs: int = 2,
        check_syncs: bool = True,
    ) -> None:
        target = torch.device(device)
        if target.type != "cuda" or not torch.cuda.is_available():
            raise ArgumentValueError(f"device={str(device)!r}: CUDA-graph capture needs an available CUDA device")
        check_int("warmup_runs", warmup_runs, minimum=1)
        generators = cuda_generators(generator, target)
        scheduler.set_timesteps(num_inference_steps, device=target)
        shape = tuple(int(s) for s in shape)
        self.plan = SamplingPlan.build(scheduler, shape[0], target)
        self.static_input = torch.randn(shape, device=target, dtype=dtype)
        self.extra = StaticInputs(extra_inputs, target)
        self.graph = torch.cuda.CUDAGraph()

        def loop() -> torch.Tensor:
            return run_steps(
                model,
                scheduler,
                self.static_input,
                self.plan,
                eta,
                generator,
                use_clipped_model_output,
                self.extra.buffers,
            )

        guard = forbid_syncs if check_syncs else contextlib.nullcontext
        side = torch.cuda.Stream(device=target)
        side.wait_stream(torch.cuda.current_stream(target))
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(warmup_runs):
                with guard():
                    loop()
        torch.cuda.current_stream(target).wait_stream(side)
        for g in generators:
            self.graph.register_generator_state(g)
        with torch.no_grad(), torch.cuda.graph(self.graph), guard():
            self.static_output = loop()

    def __call__(self, x_T: torch.Tensor, **extra: torch.Tensor) -> torch.Tensor:
        """x_0 for the initial noise ``x_T`` (same shape as the captured input) and the extra inputs."""
        if x_T.shape != self.static_input.shape:
            raise ArgumentValueError(
                f"x_T shape {tuple(x_T.shape)} must equal the captured {tuple(self.static_input.shape)}"
            )
        self.extra.fill(extra)
        self.static_input.copy_(x_T)
        self.graph.replay()
        return self.static_output.clone()
