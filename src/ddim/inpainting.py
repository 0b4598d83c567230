"""Inpainting by known-region replacement: after every step, the known region is replaced by the
known image noised to the step's landing timestep, q(x_s | x_0) (DDIM paper, eq. 4)."""

from __future__ import annotations

import math

import torch

from ddim.noise import Generator, randn_like_diffusers
from ddim.stepping import DDIMStepping
from ddim.tensor_checks import check_broadcasts_to
from ddim.validation import ArgumentTypeError, ArgumentValueError


def check_known(known: torch.Tensor | None, known_mask: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """The inpainting mask as a tensor of x's dtype and device, after checking both tensors broadcast to x."""
    if known is None and known_mask is None:
        return None
    if known is None or known_mask is None:
        raise ArgumentValueError("inpainting needs both known (the image) and known_mask (1 where it is kept)")
    for name, tensor in (("known", known), ("known_mask", known_mask)):
        if not isinstance(tensor, torch.Tensor):
            raise ArgumentTypeError(f"{name} must be a tensor, got {type(tensor).__name__}")
        check_broadcasts_to(name, tensor, x)
    mask = known_mask.to(device=x.device, dtype=x.dtype)
    if not bool(((mask >= 0) & (mask <= 1)).all()):
        raise ArgumentValueError("known_mask values must lie in [0, 1] (1: known, kept; 0: generated)")
    return mask


def replace_known(
    scheduler: DDIMStepping,
    x: torch.Tensor,
    known: torch.Tensor,
    mask: torch.Tensor,
    landing: int,
    generator: Generator,
) -> torch.Tensor:
    """Put ``known``, noised to abar at ``landing`` (-1: the final alpha; -2: none, the end), where ``mask`` is 1."""
    if landing >= 0:
        alpha = float(scheduler.alphas_cumprod[landing])
    else:
        alpha = float(scheduler.final_alpha_cumprod) if landing == -1 else 1.0
    known = known.to(device=x.device, dtype=x.dtype).expand_as(x)
    noised = math.sqrt(alpha) * known
    if alpha < 1.0:
        z = randn_like_diffusers(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        noised = noised + math.sqrt(1 - alpha) * z
    return torch.lerp(x, noised, mask)  # mask 1: known, 0: generated, in between: a soft blend
