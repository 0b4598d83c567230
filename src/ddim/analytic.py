"""Exact diffusion models for tests and demos: the optimal predictor of Gaussian (mixture) data.

If x_0 ~ sum_k w_k N(mu_k, s_k^2 I) (d dimensions) then x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps has
the marginal sum_k w_k N(sqrt(abar) mu_k, v_k I) with v_k = abar s_k^2 + 1 - abar, and the optimal
noise predictor (the one training converges to) is, by Tweedie's formula,

    eps*(x_t) = E[eps | x_t] = -sqrt(1 - abar) grad log p(x_t)
              = sqrt(1 - abar) sum_k r_k(x_t) (x_t - sqrt(abar) mu_k) / v_k,

with r_k the posterior responsibilities. For a single Gaussian the DDIM ODE (DDIM paper, eq. 14)
also has a closed-form solution (:func:`gaussian_flow`), which gives the exact answer a sampler
converges to.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ddim.prediction import PREDICTION_TYPES
from ddim.validation import ArgumentValueError, check_choice


class GaussianMixtureModel:
    """The exact model ``model(x_t, t)`` of data drawn from an isotropic Gaussian mixture.

    Args:
        alphas_cumprod: abar_t of the scheduler, indexed by the timestep (``scheduler.alphas_cumprod``).
        means: (K, *event_shape) component means; a single Gaussian is K = 1.
        stds: K component standard deviations (or one for all), each > 0.
        weights: K mixture weights (normalised here), default uniform.
        prediction_type: what the model returns: ``epsilon``, ``sample`` (x_0) or ``v_prediction``.

    Computation is in float64; the output has the dtype and device of x_t.
    """

    def __init__(
        self,
        alphas_cumprod: torch.Tensor,
        means: torch.Tensor | Sequence[float],
        stds: torch.Tensor | Sequence[float] | float,
        weights: torch.Tensor | Sequence[float] | None = None,
        prediction_type: str = "epsilon",
    ) -> None:
        self.alphas_cumprod = torch.as_tensor(alphas_cumprod).detach().double().cpu()
        self.means = torch.as_tensor(means, dtype=torch.float64)
        if self.means.ndim < 2:
            raise ArgumentValueError(f"means must have shape (K, *event_shape), got {tuple(self.means.shape)}")
        k = self.means.shape[0]
        self.stds = torch.as_tensor(stds, dtype=torch.float64).reshape(-1).expand(k).clone()
        if not bool((self.stds > 0).all()):
            raise ArgumentValueError(f"stds must be > 0, got {self.stds.tolist()}")
        raw = torch.ones(k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if raw.shape != (k,) or not bool((raw > 0).all()):
            raise ArgumentValueError(f"weights must be {k} positive numbers, got {raw.tolist()}")
        self.weights = raw / raw.sum()
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        self.prediction_type = prediction_type

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The prediction at x_t for timesteps ``t`` (an int, 0-dim or one per batch row)."""
        alpha = self.alpha_at(t, x_t)
        return self.prediction(x_t, alpha)

    def alpha_at(self, t: torch.Tensor | int, x_t: torch.Tensor) -> torch.Tensor:
        """abar_t per batch row, shaped (B, 1, ..., 1), float64 on x_t's device."""
        return self.per_row(self.alphas_cumprod[torch.as_tensor(t).reshape(-1).cpu().long()], x_t)

    @staticmethod
    def per_row(alpha: torch.Tensor | float, x_t: torch.Tensor) -> torch.Tensor:
        """One abar (or many, one per row) as float64 shaped (B, 1, ..., 1) on x_t's device."""
        rows = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1).to(x_t.device)
        rows = rows.expand(x_t.shape[0]) if rows.numel() == 1 else rows
        return rows.reshape(-1, *([1] * (x_t.ndim - 1)))

    def components(self, x: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per component k, for float64 ``x`` and abar ``a`` shaped (B, 1): the posterior responsibilities
        r_k(x_t) (B, K), the variances v_k (B, K) and x_t - sqrt(abar) mu_k (B, K, d)."""
        variances = a * self.stds.to(x.device) ** 2 + 1 - a  # (B, K)
        centred = x.reshape(x.shape[0], 1, -1) - a.sqrt().unsqueeze(-1) * self.means.to(x.device).flatten(1)
        dims = centred.shape[-1]
        logits = self.weights.to(x.device).log() - 0.5 * (centred**2).sum(-1) / variances - 0.5 * dims * variances.log()
        return torch.softmax(logits, dim=1), variances, centred

    def epsilon(self, x_t: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
        """eps*(x_t) at noise level ``alpha`` (one, or one per batch row), float64."""
        x = x_t.double()
        a = self.per_row(alpha, x).reshape(-1, 1)  # (B, 1)
        responsibilities, variances, centred = self.components(x, a)
        weighted = (responsibilities / variances).unsqueeze(-1) * centred
        return ((1 - a).sqrt() * weighted.sum(1)).reshape(x.shape)

    def data_mean(self, x_t: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
        """x0*(x_t) = E[x_0 | x_t] = sum_k r_k (mu_k + sqrt(abar) s_k^2 (x_t - sqrt(abar) mu_k) / v_k), float64.

        Finite at every abar in [0, 1]: at abar = 0 (zero SNR) it is the data mean sum_k w_k mu_k.
        """
        x = x_t.double()
        a = self.per_row(alpha, x).reshape(-1, 1)  # (B, 1)
        responsibilities, variances, centred = self.components(x, a)
        gains = (a.sqrt() * self.stds.to(x.device) ** 2 / variances).unsqueeze(-1)  # (B, K, 1)
        posterior = self.means.to(x.device).flatten(1) + gains * centred  # (B, K, d)
        return (responsibilities.unsqueeze(-1) * posterior).sum(1).reshape(x.shape)

    def prediction(self, x_t: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
        """The output of ``prediction_type`` that means eps*: eps*, x0* or v* = sqrt(abar) eps* - sqrt(1 - abar) x0*.

        Each is formed from eps* and x0* directly (no division by sqrt(abar) or sqrt(1 - abar)), so it is finite
        on the whole schedule, zero SNR (abar = 0: eps* = x_t, x0* = E[x_0], v* = -E[x_0]) included.
        """
        eps = self.epsilon(x_t, alpha)
        if self.prediction_type == "epsilon":
            return eps.to(x_t.dtype)
        x0 = self.data_mean(x_t, alpha)
        if self.prediction_type == "sample":
            return x0.to(x_t.dtype)
        a = self.per_row(alpha, x_t)
        return (a.sqrt() * eps - (1 - a).sqrt() * x0).to(x_t.dtype)

    def sample_data(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``num_samples`` x_0 from the mixture (float64, on the CPU)."""
        index = torch.multinomial(self.weights, num_samples, replacement=True, generator=generator)
        z = torch.randn((num_samples, *self.means.shape[1:]), generator=generator, dtype=torch.float64)
        return self.means[index] + self.stds[index].reshape(-1, *([1] * (z.ndim - 1))) * z


def gaussian_flow(
    x: torch.Tensor, alpha_from: float, alpha_to: float, mean: float | torch.Tensor, std: float
) -> torch.Tensor:
    """Exact solution of the DDIM ODE (eq. 14) for x_0 ~ N(mean, std^2 I) from abar ``alpha_from`` to ``alpha_to``.

    The flow keeps the standardised value fixed: (x - sqrt(a) mu) / sqrt(a s^2 + 1 - a) is constant,
    so x_to = sqrt(a_to) mu + sqrt(v_to / v_from) (x - sqrt(a_from) mu) with v = a s^2 + 1 - a.
    """
    v_from = alpha_from * std**2 + 1 - alpha_from
    v_to = alpha_to * std**2 + 1 - alpha_to
    x64 = x.double()
    return math.sqrt(alpha_to) * mean + math.sqrt(v_to / v_from) * (x64 - math.sqrt(alpha_from) * mean)
