"""The class-conditional digits model: labels, its schedule, and guided sampling of chosen digits.

A :class:`~ddim.app.digits.unet.DigitsUNet` with 11 labels (digits 0-9 and the null label 10),
v-prediction, trained on Stable Diffusion's schedule rescaled to zero terminal SNR and sampled on a
trailing grid (arXiv 2305.08891). Sampling uses classifier-free guidance (arXiv 2207.12598) with
guidance rescale::

    v = v_null + s (v_digit - v_null),   then   v <- phi v std(v_digit) / std(v) + (1 - phi) v

From Python (what ``ddim sample --digit 7 7 3 -n 1`` does, up to its per-sample seeding)::

    import torch
    from ddim.app.digits import load_pretrained, sample_digits, to_images
    model, scheduler = load_pretrained(conditional=True)
    x = sample_digits(model, scheduler, [7, 7, 3], steps=50, generator=torch.Generator().manual_seed(0))
    pixels = to_images(x)  # (3, 8, 8) uint8: two sevens and a three
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ddim.app.digits.data import SAMPLE_SHAPE
from ddim.guidance import CFGPlusPlus, ClassifierFreeGuidance
from ddim.model import Model
from ddim.noise import Generator
from ddim.sampling import StepCallback, sample
from ddim.scheduler import DDIMScheduler
from ddim.validation import ArgumentTypeError, ArgumentValueError, check_real, check_str_choice, is_int

#: Labels of the conditional model: digits 0..9, then the null label (no digit; classifier-free guidance).
NUM_DIGITS = 10
NULL_LABEL = 10
NUM_LABELS = 11
#: Defaults of guided sampling: the guidance scale s and the rescale phi (the paper's 0.7). On the shipped
#: model (500 samples, 50 steps) the classifier recognises 99.4% of the digits at s = 1 and 100% from s = 1.5,
#: while digits-FID grows with s (3.3, 3.9, 7.0 at s = 1, 1.5, 2; 16 at s = 3): 1.5 is the smallest s at 100%.
DEFAULT_GUIDANCE_SCALE = 1.5
DEFAULT_GUIDANCE_RESCALE = 0.7
#: Guidance kinds of :func:`sample_digits`: classifier-free guidance, or CFG++ (arXiv 2406.08070), whose
#: lambda is in [0, 1]; 0.6 is the CFG++ paper's usual text-to-image value.
GUIDANCE_KINDS = ("cfg", "cfg++")
DEFAULT_CFG_PP_SCALE = 0.6


def scheduler_config(zero_snr: bool = True) -> dict[str, Any]:
    """The conditional model's scheduler config: Stable Diffusion's betas (``scaled_linear``, 0.00085..0.012,
    T = 1000), v-prediction, trailing spacing, no clipping; rescaled to zero terminal SNR unless ``zero_snr=False``
    (the control model)."""
    return {
        "num_train_timesteps": 1000,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "rescale_betas_zero_snr": bool(zero_snr),
        "prediction_type": "v_prediction",
        "timestep_spacing": "trailing",
        "clip_sample": False,
    }


def check_digits(digits: Sequence[int] | torch.Tensor, name: str = "digits") -> torch.Tensor:
    """``digits`` as a non-empty 1-D int64 tensor after checking every entry lies in 0..9."""
    if isinstance(digits, torch.Tensor):
        values = digits.reshape(-1).tolist() if not digits.is_floating_point() else None
    else:
        values = list(digits) if isinstance(digits, Sequence) and not isinstance(digits, str) else None
    if values is None or not all(is_int(d) for d in values):
        raise ArgumentTypeError(f"{name} must be a sequence of ints 0..9, got {digits!r}")
    if not values:
        raise ArgumentValueError(f"{name} must hold at least one digit")
    bad = [int(d) for d in values if not 0 <= int(d) < NUM_DIGITS]
    if bad:
        raise ArgumentValueError(f"{name} must lie in 0..9, got {bad[0]}")
    return torch.tensor([int(d) for d in values], dtype=torch.int64)


class Labelled:
    """``model(x, t, labels)`` with fixed labels, as the ``model(x, t)`` that :func:`ddim.sample` calls."""

    def __init__(self, model: Any, labels: torch.Tensor) -> None:
        self.model = model
        self.labels = labels

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model(x, t, self.labels.to(x.device))


def guided_models(model: Any, digits: torch.Tensor) -> tuple[Model, Model]:
    """The conditional branch (labels ``digits``) and the unconditional one (the null label) of ``model``."""
    return Labelled(model, digits), Labelled(model, torch.full_like(digits, NULL_LABEL))


def sample_digits(
    model: Any,
    scheduler: DDIMScheduler,
    digits: Sequence[int] | torch.Tensor,
    *,
    steps: int = 50,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    guidance_rescale: float = DEFAULT_GUIDANCE_RESCALE,
    eta: float = 0.0,
    generator: Generator = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    noise: torch.Tensor | None = None,
    callback: StepCallback | None = None,
    guidance: str = "cfg",
) -> torch.Tensor:
    """Samples (len(digits), 1, 8, 8) in [-1, 1]ish, row i of digit ``digits[i]``, with classifier-free guidance.

    ``guidance_scale`` s >= 0 (1: the conditional model alone, run without the null-label pass; 0: the
    unconditional one) and ``guidance_rescale`` phi in [0, 1] as in :func:`ddim.sample`; ``generator`` a
    generator or one per row; ``noise`` a fixed x_T (len(digits), 1, 8, 8) instead of a drawn one; ``callback``
    as :func:`ddim.sample`'s, after every step. ``guidance="cfg++"``: CFG++ (arXiv 2406.08070) with
    ``guidance_scale`` lambda in [0, 1] and no rescale (``ddim.CFGPlusPlus``).
    """
    labels = check_digits(digits)
    check_str_choice("guidance", guidance, GUIDANCE_KINDS)
    check_real("guidance_scale", guidance_scale, 0.0)
    check_real("guidance_rescale", guidance_rescale, 0.0, 1.0)
    conditional, unconditional = guided_models(model, labels)
    guided: Model
    if guidance == "cfg++":
        if guidance_rescale != 0.0:
            raise ArgumentValueError(f"guidance_rescale={guidance_rescale!r} is for guidance='cfg'; CFG++ takes 0")
        guided = CFGPlusPlus(conditional, unconditional, guidance_scale)
    else:
        # at s = 1 the guided output is the conditional one and the rescale is 1: the null-label pass is skipped
        rescale = guidance_rescale if guidance_scale != 1.0 else 0.0
        guided = ClassifierFreeGuidance(conditional, unconditional, guidance_scale, rescale)
    return sample(
        guided,
        scheduler,
        None if noise is not None else (labels.shape[0], *SAMPLE_SHAPE),
        noise=noise,
        num_inference_steps=steps,
        eta=eta,
        generator=generator,
        device=device,
        progress=progress,
        callback=callback,
    )
