"""Gaussian noise drawn exactly as diffusers' ``randn_tensor`` draws it.

Matching the draw order matters: with the same seeded generator(s), our samplers then add the very
noise diffusers adds. Rules reproduced:

- a single generator draws the whole tensor; a list of generators draws one batch row each
  (shape ``(1, *shape[1:])``), so a row depends on its own generator only;
- a CPU generator draws on the CPU and the result is moved to ``device``;
- a CUDA generator cannot produce a tensor for another device type.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ddim.tensor_checks import check_floating
from ddim.validation import ArgumentTypeError, ArgumentValueError

Generator = torch.Generator | Sequence[torch.Generator] | None


def randn_like_diffusers(
    shape: Sequence[int],
    generator: Generator = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Standard normal tensor of ``shape``, drawn from ``generator`` as diffusers does.

    A list holds one generator per batch row (row i drawn from generator i); zero rows take an empty list.
    """
    target = torch.device(device) if device is not None else torch.device("cpu")
    shape = tuple(int(s) for s in shape)
    if isinstance(generator, Sequence) and not isinstance(generator, torch.Generator):
        generators = list(generator)
        if not shape:
            raise ArgumentValueError("generator is a list (one per batch row); it needs a batch-first shape, got ()")
        if len(generators) != shape[0]:
            raise ArgumentValueError(
                f"generator is a list of {len(generators)} generators; it must hold one per batch row "
                f"(batch size {shape[0]})"
            )
        if not generators:  # zero rows, zero generators: nothing to draw
            return torch.empty(shape, device=target, dtype=dtype)
        if len(generators) == 1:
            return randn_like_diffusers(shape, generators[0], target, dtype)
        draw_device = _draw_device(generators[0], target)
        rows = [torch.randn((1, *shape[1:]), generator=g, device=draw_device, dtype=dtype) for g in generators]
        return torch.cat(rows, dim=0).to(target)
    if generator is None:
        return torch.randn(shape, device=target, dtype=dtype)
    if not isinstance(generator, torch.Generator):
        raise ArgumentTypeError(
            f"generator must be a torch.Generator, a list of them, or None; got {type(generator).__name__}"
        )
    return torch.randn(shape, generator=generator, device=_draw_device(generator, target), dtype=dtype).to(target)


def _draw_device(generator: torch.Generator, target: torch.device) -> torch.device:
    kind = generator.device.type
    if kind == target.type:
        return target
    if kind == "cpu":
        return torch.device("cpu")
    raise ArgumentValueError(f"cannot draw a {target.type} tensor from a generator on device {kind!r}")


def step_noise(
    eta: float,
    generator: Generator,
    variance_noise: torch.Tensor | None,
    model_output: torch.Tensor,
    sample: torch.Tensor,
) -> torch.Tensor | None:
    """The z of a step's ``sigma_t z`` (DDIM paper, eq. 12): None at eta = 0, else ``variance_noise`` (checked
    against the sample) or drawn from ``generator`` as diffusers draws it; passing both is an error."""
    if eta == 0:
        return None
    if generator is not None and variance_noise is not None:
        raise ArgumentValueError(
            "pass either generator or variance_noise, not both (variance_noise is the noise itself)"
        )
    if variance_noise is None:
        return randn_like_diffusers(
            model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype
        )
    check_floating("variance_noise", variance_noise)
    if variance_noise.shape != sample.shape:
        raise ArgumentValueError(
            f"variance_noise shape {tuple(variance_noise.shape)} must equal sample shape {tuple(sample.shape)}"
        )
    return variance_noise
