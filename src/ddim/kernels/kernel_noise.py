"""eta > 0 noise drawn inside the fused step kernel, from per-step seeds drawn from torch generators.

Two noise sources for a stochastic step (``scheduler.noise_source``):

- ``"torch"`` (default): z is drawn with ``torch.randn`` exactly as diffusers draws it, written to
  memory, and read back by the step; with the same generator the step is bit-equal to diffusers'.
- ``"kernel"``: each step draws one int64 seed from the generator (one per batch row for a list of
  generators) *on the generator's device*, and the fused kernel computes
  z where it is used: Philox4x32-10 (Salmon et al. 2011) keyed by the seed gives four words per counter,
  Box-Muller turns their two pairs into four normals, and element i takes normal i % 4 of counter i // 4
  (one seed for several launch rows: row r's counters start at r * ceil(row size / 4)). The step reads
  x_t and the model output once and writes once; the seeds come from the generator's stream, so a run
  is reproducible from the generator's seed and a CUDA graph that registers the generator draws fresh
  seeds on every replay.
  The numbers differ from torch's stream (another generator), with the same distribution.

``"kernel"`` needs the fused kernel: CUDA tensors of float16/bfloat16/float32 with Triton installed
(or CPU tensors under ``TRITON_INTERPRET=1``), no per-element timestep, no autograd recording; any
other case raises a ``ValueError`` (no silent switch to the other source). A ``variance_noise``
tensor passed to ``step`` is used as given whatever the source.
"""

from __future__ import annotations

import torch

from ddim.coefficients import Folded
from ddim.noise import Generator
from ddim.thresholding import X0Transform
from ddim.update import records_gradients
from ddim.validation import ArgumentTypeError, ArgumentValueError, check_choice

NOISE_SOURCES = ("torch", "kernel")
#: Seeds are drawn uniformly from [0, SEED_END).
SEED_END = 2**63 - 1


def seed_device(generator: torch.Generator, target: torch.device) -> torch.device:
    """Where a generator draws a seed for ``target``: its own device (a CPU generator's seed is moved)."""
    if generator.device.type == target.type or generator.device.type == "cpu":
        return generator.device
    raise ArgumentValueError(f"cannot draw seeds for a {target.type} step from a generator on {generator.device}")


def draw_seeds(generator: Generator, batch: int, device: torch.device) -> torch.Tensor:
    """int64 seeds on ``device``: one from a single generator (or torch's default one), one per batch row
    from a list of generators (each row's noise then depends on its own generator only)."""
    if generator is None:
        return torch.randint(0, SEED_END, (1,), device=device, dtype=torch.int64)
    generators = [generator] if isinstance(generator, torch.Generator) else list(generator)
    if not all(isinstance(g, torch.Generator) for g in generators):
        raise ArgumentTypeError("generator must be a torch.Generator, a list of them, or None")
    if len(generators) not in (1, batch):
        raise ArgumentValueError(
            f"generator is a list of {len(generators)} generators; it must hold one per batch row (batch size {batch})"
        )
    seeds = [
        torch.randint(0, SEED_END, (1,), generator=g, device=seed_device(g, device), dtype=torch.int64)
        for g in generators
    ]
    drawn = seeds[0] if len(seeds) == 1 else torch.cat([s.to(device) for s in seeds])
    return drawn.to(device, non_blocking=True)


def kernel_noise_update(
    noise_source: str,
    sample: torch.Tensor,
    model_output: torch.Tensor,
    per_element_timestep: bool,
    coefficients: Folded,
    transform: X0Transform,
    generator: Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prev_sample, x0)`` of an eta > 0 step with the noise drawn in the fused kernel (module doc)."""
    check_choice("noise_source", noise_source, NOISE_SOURCES)
    from ddim import kernels
    from ddim.kernels.direct_launch import interpreting

    usable = (
        (sample.is_cuda or (interpreting() and sample.device.type == "cpu"))
        and kernels.fused_update_available(sample, model_output, None)
        and not per_element_timestep
        and not torch.compiler.is_compiling()
        and not records_gradients(sample, model_output, None)
    )
    if not usable:
        raise ArgumentValueError(
            f"noise_source={noise_source!r} needs the fused kernel: CUDA tensors of float16, bfloat16 or float32 "
            f"with Triton installed, no per-element timestep and no gradient recording; got {sample.dtype} on "
            f"{sample.device} (use noise_source='torch')"
        )
    batch = sample.shape[0] if sample.ndim else 1
    seeds = draw_seeds(generator, batch, sample.device)
    return kernels.fused_update(sample, model_output, coefficients, transform, seeds=seeds)
