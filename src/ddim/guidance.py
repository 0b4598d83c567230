"""Classifier-free guidance (Ho & Salimans, arXiv 2207.12598): m = m_u + s (m_c - m_u), and its rescale."""

from __future__ import annotations

import torch

from ddim.model import Model, check_output
from ddim.validation import ArgumentValueError, check_real


def rescale_noise_cfg(
    noise_cfg: torch.Tensor, noise_pred_text: torch.Tensor, guidance_rescale: float = 0.0
) -> torch.Tensor:
    """Rescale a guided prediction to the per-sample std of the conditional one (arXiv 2305.08891, sec. 3.4).

    rescaled = noise_cfg * std(noise_pred_text) / std(noise_cfg), stds over all but the batch dim;
    result = guidance_rescale * rescaled + (1 - guidance_rescale) * noise_cfg. A value of 0 returns
    ``noise_cfg`` unchanged in value; 0.7 is the paper's recommendation against over-exposure.
    """
    if not 0.0 <= float(guidance_rescale) <= 1.0:
        raise ArgumentValueError(f"guidance_rescale={guidance_rescale!r} is out of range; allowed values are 0..1")
    if noise_cfg.shape != noise_pred_text.shape:
        raise ArgumentValueError(
            f"noise_cfg shape {tuple(noise_cfg.shape)} and noise_pred_text shape "
            f"{tuple(noise_pred_text.shape)} must be equal"
        )
    dims = list(range(1, noise_pred_text.ndim))
    std_text = noise_pred_text.std(dim=dims, keepdim=True)
    std_cfg = noise_cfg.std(dim=dims, keepdim=True)
    rescaled = noise_cfg * (std_text / std_cfg)
    return guidance_rescale * rescaled + (1 - guidance_rescale) * noise_cfg


def check_guidance(
    guidance_scale: float, unconditional_model: Model | None, guidance_rescale: float, classifier_scale: float
) -> None:
    """Check the guidance arguments of :func:`ddim.sample` (finite reals; a scale needs an unconditional model)."""
    check_real("guidance_scale", guidance_scale)
    check_real("classifier_scale", classifier_scale)
    check_real("guidance_rescale", guidance_rescale, 0.0, 1.0)
    if unconditional_model is None and (guidance_scale != 1.0 or guidance_rescale != 0.0):
        raise ArgumentValueError(
            f"guidance_scale={guidance_scale!r} / guidance_rescale={guidance_rescale!r} need an unconditional "
            "branch: pass unconditional_model (or leave guidance_scale=1.0 and guidance_rescale=0.0)"
        )


def guided_output(
    model: Model,
    unconditional_model: Model | None,
    x: torch.Tensor,
    t: torch.Tensor,
    step_t: int,
    guidance_scale: float,
    guidance_rescale: float,
    check_finite: bool,
    index: int,
) -> torch.Tensor:
    """The (classifier-free guided) model output at x_t; ``t`` per row, ``step_t`` the same as an int (messages)."""
    conditional = model(x, t)
    check_output("model", conditional, x, index, step_t, check_finite)
    if unconditional_model is None or (guidance_scale == 1.0 and guidance_rescale == 0.0):
        return conditional
    unconditional = unconditional_model(x, t)
    check_output("unconditional_model", unconditional, x, index, step_t, check_finite)
    guided = unconditional + guidance_scale * (conditional - unconditional)
    if guidance_rescale > 0:
        guided = rescale_noise_cfg(guided, conditional, guidance_rescale)
    return guided
