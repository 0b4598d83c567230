"""Classifier-free guidance helpers."""

from __future__ import annotations

import torch


def rescale_noise_cfg(
    noise_cfg: torch.Tensor, noise_pred_text: torch.Tensor, guidance_rescale: float = 0.0
) -> torch.Tensor:
    """Rescale a guided prediction to the per-sample std of the conditional one (arXiv 2305.08891, sec. 3.4).

    rescaled = noise_cfg * std(noise_pred_text) / std(noise_cfg), stds over all but the batch dim;
    result = guidance_rescale * rescaled + (1 - guidance_rescale) * noise_cfg. A value of 0 returns
    ``noise_cfg`` unchanged in value; 0.7 is the paper's recommendation against over-exposure.
    """
    if not 0.0 <= float(guidance_rescale) <= 1.0:
        raise ValueError(f"guidance_rescale={guidance_rescale!r} is out of range; allowed values are 0..1")
    if noise_cfg.shape != noise_pred_text.shape:
        raise ValueError(
            f"noise_cfg shape {tuple(noise_cfg.shape)} and noise_pred_text shape "
            f"{tuple(noise_pred_text.shape)} must be equal"
        )
    dims = list(range(1, noise_pred_text.ndim))
    std_text = noise_pred_text.std(dim=dims, keepdim=True)
    std_cfg = noise_cfg.std(dim=dims, keepdim=True)
    rescaled = noise_cfg * (std_text / std_cfg)
    return guidance_rescale * rescaled + (1 - guidance_rescale) * noise_cfg
