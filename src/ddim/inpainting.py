"""Inpainting by known-region replacement, as a model wrapper: after every step, the known region is replaced
by the known image noised to the step's landing, q(x_s | x_0) (DDIM paper, eq. 4), and by the image itself
after the last step."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ddim.model import Model, ModelWrapper, Prediction, predict
from ddim.noise import Generator, randn_like_diffusers
from ddim.plan import GridStep
from ddim.tensor_checks import check_broadcasts_to
from ddim.validation import ArgumentTypeError, ArgumentValueError


@dataclass(frozen=True)
class Inpainting(ModelWrapper):
    """``model`` unchanged, plus the known-region replacement after each step (see the module doc).

    ``known`` is the image, ``known_mask`` 1 where it is kept, 0 where it is generated (in between: a
    soft blend); both must broadcast to the sample shape (checked on the first step, or by :meth:`check`).
    """

    model: Model
    known: torch.Tensor
    known_mask: torch.Tensor

    def __post_init__(self) -> None:
        for name, tensor in (("known", self.known), ("known_mask", self.known_mask)):
            if not isinstance(tensor, torch.Tensor):
                raise ArgumentTypeError(f"{name} must be a tensor, got {type(tensor).__name__}")
        if not bool(((self.known_mask >= 0) & (self.known_mask <= 1)).all()):
            raise ArgumentValueError("known_mask values must lie in [0, 1] (1: known, kept; 0: generated)")

    def check(self, x: torch.Tensor) -> None:
        """``ValueError`` unless the image and the mask broadcast to the sample ``x``."""
        check_broadcasts_to("known", self.known, x)
        check_broadcasts_to("known_mask", self.known_mask, x)

    def predict(self, x: torch.Tensor, t: torch.Tensor, **extra: Any) -> Prediction:
        return predict(self.model, x, t, **extra)

    def after_step(self, x: torch.Tensor, step: GridStep, last: bool, generator: Generator) -> torch.Tensor:
        """Put ``known``, noised to the step's landing (itself after the last step), where the mask is 1."""
        x = super().after_step(x, step, last, generator)
        alpha = 1.0 if last else step.alpha_to
        mask = self.known_mask.to(device=x.device, dtype=x.dtype)
        known = self.known.to(device=x.device, dtype=x.dtype).expand_as(x)
        noised = math.sqrt(alpha) * known
        if alpha < 1.0:
            z = randn_like_diffusers(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            noised = noised + math.sqrt(1 - alpha) * z
        return torch.lerp(x, noised, mask)  # mask 1: known, 0: generated, in between: a soft blend


def inpainting(model: Model, known: torch.Tensor | None, known_mask: torch.Tensor | None) -> Model:
    """``model`` wrapped in :class:`Inpainting` when both tensors are given (none: ``model`` itself)."""
    if known is None and known_mask is None:
        return model
    if known is None or known_mask is None:
        raise ArgumentValueError("inpainting needs both known (the image) and known_mask (1 where it is kept)")
    return Inpainting(model, known, known_mask)
