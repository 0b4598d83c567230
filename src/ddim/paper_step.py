"""DDIM's step in the paper's form: the readable definition the fast paths are tested against.

Song, Meng & Ermon, "Denoising Diffusion Implicit Models" (arXiv 2010.02502); abar_t is their alpha_t.
"""

from __future__ import annotations

import torch

from ddim.prediction import prediction_coefficients
from ddim.thresholding import threshold_scale
from ddim.validation import ArgumentValueError, check_real


def ddim_step(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    alpha_t: float | torch.Tensor,
    alpha_prev: float | torch.Tensor,
    *,
    eta: float = 0.0,
    prediction_type: str = "epsilon",
    clip_sample_range: float | None = None,
    thresholding_ratio: float | None = None,
    sample_max_value: float = 1.0,
    use_clipped_model_output: bool = False,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step x_t -> x_prev from abar_t = ``alpha_t`` to abar_prev = ``alpha_prev``.

    Returns ``(x_prev, x0)``. Alphas are numbers, or tensors that broadcast over ``sample`` (one per
    batch row: shape (B, 1, ..., 1)). Arithmetic is in the dtype of the inputs (float64 for an oracle).
    ``clip_sample_range`` clips x0 to [-r, r]; ``thresholding_ratio`` applies dynamic thresholding
    (Imagen, arXiv 2205.11487, sec. 2.3) instead. ``noise`` is z, needed when sigma > 0.
    """
    eta = check_real("eta", eta, 0.0)
    x, m = sample, model_output
    a, a_prev = as_alpha(alpha_t, x), as_alpha(alpha_prev, x)

    # (1) eq. 9: the predicted x0 and the noise epsilon implied by the model output.
    x0_x, x0_m, eps_x, eps_m = prediction_coefficients(a, prediction_type)
    x0 = x0_x * x + x0_m * m
    eps = eps_x * x + eps_m * m

    # (2) clipping or dynamic thresholding of x0 (not in the paper; diffusers' clip_sample / thresholding).
    if thresholding_ratio is not None:
        s = threshold_scale(x0, thresholding_ratio, sample_max_value).reshape(-1, *([1] * (x.ndim - 1)))
        x0 = x0.clamp(-s, s) / s
    elif clip_sample_range is not None:
        x0 = x0.clamp(-clip_sample_range, clip_sample_range)
    transformed = thresholding_ratio is not None or clip_sample_range is not None
    if use_clipped_model_output and transformed:
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()  # epsilon consistent with the clipped x0

    # (3) eq. 16 and (4) eq. 12: x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z.
    return renoise(x0, eps, a, a_prev, eta, noise), x0


def renoise(
    x0: torch.Tensor,
    eps: torch.Tensor,
    a: torch.Tensor,
    a_prev: torch.Tensor,
    eta: float,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z (DDIM paper, eq. 12), with
    sigma_t(eta) = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev) (eq. 16)."""
    sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt() if eta > 0 else torch.zeros_like(a)
    direction = (1 - a_prev - sigma**2).clamp(min=0.0).sqrt() if eta <= 1 else (1 - a_prev - sigma**2).sqrt()
    x_prev = a_prev.sqrt() * x0 + direction * eps
    if eta > 0:
        if noise is None:
            raise ArgumentValueError("eta > 0 needs noise (the z of eq. 12), got noise=None")
        x_prev = x_prev + sigma * noise
    return x_prev


def as_alpha(alpha: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """An alpha as a tensor on ``like``'s device: float64 when it is one number (coefficients are then
    derived in float64 and rounded once where they meet ``like``), else ``like``'s dtype."""
    value = torch.as_tensor(alpha, device=like.device)
    return value.to(torch.float64 if value.ndim == 0 else like.dtype)


def cfg_pp_step(
    guided_output: torch.Tensor,
    unconditional_output: torch.Tensor,
    sample: torch.Tensor,
    alpha_t: float | torch.Tensor,
    alpha_prev: float | torch.Tensor,
    *,
    eta: float = 0.0,
    prediction_type: str = "epsilon",
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One CFG++ DDIM step (Chung et al., "CFG++", arXiv 2406.08070, Algorithm 1), from abar_t to abar_prev.

    ``guided_output`` is the guided prediction m_lambda = m_u + lambda (m_c - m_u), lambda in [0, 1], and
    ``unconditional_output`` m_u, both of ``prediction_type``. Returns ``(x_prev, x0)``. With eta > 0 the
    DDIM noise of eq. 16 is added as in :func:`ddim_step` (the paper states eta = 0).
    """
    eta = check_real("eta", eta, 0.0)
    x = sample
    a, a_prev = as_alpha(alpha_t, x), as_alpha(alpha_prev, x)
    x0_x, x0_m, eps_x, eps_m = prediction_coefficients(a, prediction_type)

    # (1) Tweedie's estimate with the guided noise: x0 = (x_t - sqrt(1 - abar_t) eps_lambda) / sqrt(abar_t).
    x0 = x0_x * x + x0_m * guided_output

    # (2) the noise the step renoises with is the unconditional one, eps_u (not eps_lambda as in CFG).
    eps_unconditional = eps_x * x + eps_m * unconditional_output

    # (3) x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps_u (+ sigma z), with DDIM's
    # sigma_t(eta) (DDIM paper, eq. 16), 0 in the paper's algorithm.
    return renoise(x0, eps_unconditional, a, a_prev, eta, noise), x0
