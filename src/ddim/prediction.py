"""What a model output means: x0 and epsilon as linear functions of (x_t, model output), per prediction type.

With abar_t = a, x_t = sqrt(a) x0 + sqrt(1 - a) eps (DDIM paper, eq. 4), a model output m of each
type gives (eq. 9 for epsilon; Salimans & Ho, arXiv 2202.00512, sec. 4 for v)::

    epsilon:       x0 = (x - sqrt(1-a) m) / sqrt(a),   eps = m
    sample:        x0 = m,                             eps = (x - sqrt(a) m) / sqrt(1-a)
    v_prediction:  x0 = sqrt(a) x - sqrt(1-a) m,       eps = sqrt(1-a) x + sqrt(a) m

:func:`prediction_coefficients` returns the four numbers (x0_x, x0_m, eps_x, eps_m) of
``x0 = x0_x x + x0_m m`` and ``eps = eps_x x + eps_m m``; every part of the package that needs this
algebra (the step, its folded tables, classifier guidance, the analytic model) calls it.
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args, overload

import torch

from ddim.validation import check_choice

PredictionType = Literal["epsilon", "sample", "v_prediction"]
PREDICTION_TYPES: tuple[str, ...] = get_args(PredictionType)


@overload
def prediction_coefficients(alpha: float, prediction_type: str) -> tuple[float, float, float, float]: ...


@overload
def prediction_coefficients(
    alpha: torch.Tensor, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]: ...


def prediction_coefficients(alpha: float | torch.Tensor, prediction_type: str) -> tuple[Any, Any, Any, Any]:
    """(x0_x, x0_m, eps_x, eps_m) at abar_t = ``alpha`` (a float, or a tensor of any shape), with
    x0 = x0_x x_t + x0_m m and eps = eps_x x_t + eps_m m.

    Zeros and ones are exact (``0.0``/``1.0`` for a float, ``zeros_like``/``ones_like`` for a tensor),
    so structural zeros of anything built from them stay exactly zero.
    """
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    sa: Any
    sb: Any
    zero: Any
    one: Any
    if isinstance(alpha, torch.Tensor):
        sa, sb = alpha.sqrt(), (1 - alpha).sqrt()
        zero, one = torch.zeros_like(alpha), torch.ones_like(alpha)
    else:
        sa, sb = math.sqrt(alpha), math.sqrt(1 - alpha)
        zero, one = 0.0, 1.0
    if prediction_type == "epsilon":
        return (1 / sa, -sb / sa, zero, one)
    if prediction_type == "sample":
        return (zero, one, 1 / sb, -sa / sb)
    return (sa, -sb, sb, sa)


def model_output_from(
    x_t: torch.Tensor, epsilon: torch.Tensor, alpha: float | torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """The model output of ``prediction_type`` that means ``epsilon`` at x_t: m = (eps - eps_x x_t) / eps_m."""
    _, _, eps_x, eps_m = prediction_coefficients(alpha, prediction_type)
    return (epsilon - eps_x * x_t) / eps_m
