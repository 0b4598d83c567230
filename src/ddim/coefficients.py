"""Per-timestep coefficients of the DDIM update, tabulated once in float64.

The generalised DDIM step (DDIM paper, eq. 12) from x_t to x_prev, with abar_t = a, abar_prev = a',
is::

    x0   = (x_t - sqrt(1 - a) * eps) / sqrt(a)                       # eq. 9 ("predicted x0")
    x_prev = sqrt(a') * x0 + sqrt(1 - a' - sigma^2) * eps + sigma * z  # eq. 12
    sigma  = eta * sqrt((1 - a') / (1 - a)) * sqrt(1 - a / a')        # eq. 16

For every prediction type the predicted x0 and eps are linear in (x_t, model_output) m
(:func:`ddim.prediction.prediction_coefficients`), so the whole update folds into six numbers per timestep::

    x0     = X0_X * x + X0_M * m            (then clipped or thresholded, if configured)
    x_prev = PREV_X0 * x0 + PREV_X * x + PREV_M * m + STD * z

``PREV_X0`` is non-zero only when x0 is clipped/thresholded (the non-linear part cannot be folded).
With ``use_clipped_model_output`` eps is re-derived from the clipped x0, eps = (x - sqrt(a) x0)/sqrt(1-a).

Tables have T + 2 rows: row t for training timestep t in [0, T), and two rows of NaN at index T and
-1 (the last row), so that an out-of-range index clamped into [-1, T] yields NaN, never a wrong number.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ddim.prediction import PREDICTION_TYPES, prediction_coefficients
from ddim.validation import ArgumentValueError, check_choice

X0_X, X0_M, PREV_X0, PREV_X, PREV_M, STD = range(6)
NUM_COLUMNS = 6


@dataclass(frozen=True)
class UpdateTerms:
    """Which coefficients of a table are structurally non-zero (known without reading the table).

    The update reads only the present terms, so the same code serves float and tensor coefficients
    without branching on values. Derived from :func:`step_coefficients` by :func:`update_terms`.
    """

    x0_is_model_output: bool
    prev_x0: bool
    prev_x: bool
    prev_m: bool


def update_terms(prediction_type: str, transforms_x0: bool, use_clipped_model_output: bool) -> UpdateTerms:
    """Structural zero pattern of :func:`step_coefficients` for a configuration (a lookup: traceable)."""
    terms = UPDATE_TERMS.get((prediction_type, bool(transforms_x0), bool(use_clipped_model_output)))
    if terms is None:
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        raise ArgumentValueError(
            f"no update terms for {prediction_type!r}, {transforms_x0!r}, {use_clipped_model_output!r}"
        )
    return terms


def derive_update_terms(prediction_type: str, transforms_x0: bool, use_clipped_model_output: bool) -> UpdateTerms:
    """Read the zero pattern off :func:`step_coefficients` at one generic pair of alphas.

    A structural zero is an exact zero there (:func:`ddim.prediction.prediction_coefficients` and the
    folding make zeros with ``zeros_like``); a coefficient non-zero there is non-zero for generic alphas.
    """
    alpha_t, alpha_prev = torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.6, dtype=torch.float64)
    values = step_coefficients(alpha_t, alpha_prev, 0.0, prediction_type, transforms_x0, use_clipped_model_output)
    row = values.tolist()
    return UpdateTerms(
        x0_is_model_output=row[X0_X] == 0.0 and row[X0_M] == 1.0,
        prev_x0=row[PREV_X0] != 0.0,
        prev_x=row[PREV_X] != 0.0,
        prev_m=row[PREV_M] != 0.0,
    )


def alpha_prev(alphas_cumprod: torch.Tensor, prev_timesteps: torch.Tensor, final_alpha_cumprod: float) -> torch.Tensor:
    """abar at each previous timestep; a negative previous timestep means the final alpha."""
    safe = prev_timesteps.clamp(0, len(alphas_cumprod) - 1)
    final = torch.full_like(alphas_cumprod[safe], final_alpha_cumprod)
    return torch.where(prev_timesteps >= 0, alphas_cumprod[safe], final)


def ddim_variance(alpha_t: torch.Tensor, alpha_t_prev: torch.Tensor) -> torch.Tensor:
    """sigma^2 / eta^2 = (1 - a') / (1 - a) * (1 - a / a')  (DDIM paper, eq. 16)."""
    return (1 - alpha_t_prev) / (1 - alpha_t) * (1 - alpha_t / alpha_t_prev)


def schedule_variance(
    alphas_cumprod: torch.Tensor,
    timestep: torch.Tensor,
    prev_timestep: torch.Tensor,
    final_alpha_cumprod: float | torch.Tensor,
) -> torch.Tensor:
    """sigma^2 / eta^2 (eq. 16) from abar at ``timestep`` to abar at ``prev_timestep`` (negative: the final
    alpha), in the dtype of ``alphas_cumprod``, on the timesteps' device; an index past the table gives NaN."""
    table = alphas_cumprod.to(timestep.device)
    last = len(table) - 1
    nan = torch.full_like(table[:1], float("nan"))[0]
    a = torch.where((timestep >= 0) & (timestep <= last), table[timestep.clamp(0, last)], nan)
    final = torch.as_tensor(final_alpha_cumprod, dtype=table.dtype, device=table.device)
    a_prev = torch.where(prev_timestep < 0, final, table[prev_timestep.clamp(0, last)])
    return ddim_variance(a, torch.where(prev_timestep <= last, a_prev, nan))


def step_coefficients(
    alpha_t: torch.Tensor,
    alpha_t_prev: torch.Tensor,
    eta: float,
    prediction_type: str,
    transforms_x0: bool,
    use_clipped_model_output: bool,
) -> torch.Tensor:
    """The six folded coefficients (last dim) for abar_t = ``alpha_t`` and abar_prev = ``alpha_t_prev``.

    Elementwise torch arithmetic in the dtype of the inputs (float64 for tables), so the same formulas
    serve the tabulated eager path and a traced ``torch.compile`` graph.
    """
    a, ap = alpha_t, alpha_t_prev
    x0_x, x0_m, eps_x, eps_m = prediction_coefficients(a, prediction_type)  # eq. 9
    sa, sb, sap = a.sqrt(), (1 - a).sqrt(), ap.sqrt()
    # eta = 0 needs no variance, which is undefined at abar_t = 1 (the first step of an inversion).
    std = eta * ddim_variance(a, ap).sqrt() if eta > 0 else torch.zeros_like(a)  # eq. 16
    # With eta <= 1 the radicand is >= 0 in exact arithmetic; clamp rounding-level negatives
    # (e.g. zero terminal SNR at eta = 1), leave a genuinely negative one (eta > 1) to give NaN.
    radicand = 1 - ap - std**2
    if eta <= 1:
        radicand = radicand.clamp(min=0.0)
    direction = radicand.sqrt()
    zero = torch.zeros_like(a)
    # eq. 12: x_prev = sqrt(a') x0 + direction * eps, with x0 and eps linear in (x, m) unless x0 is transformed.
    if not transforms_x0:
        prev = (zero, sap * x0_x + direction * eps_x, sap * x0_m + direction * eps_m)
    elif use_clipped_model_output:  # eps re-derived from the transformed x0: (x - sqrt(a) x0) / sqrt(1 - a)
        prev = (sap - direction * sa / sb, direction / sb, zero)
    else:
        prev = (sap, direction * eps_x, direction * eps_m)
    columns = [zero] * NUM_COLUMNS
    columns[X0_X], columns[X0_M], columns[STD] = x0_x, x0_m, std
    columns[PREV_X0], columns[PREV_X], columns[PREV_M] = prev
    return torch.stack(columns, dim=-1)


def schedule_pairs(
    alphas_cumprod: torch.Tensor, prev_timesteps: torch.Tensor, final_alpha_cumprod: float
) -> torch.Tensor:
    """Float64 table (T + 2, 2) of (abar_t, abar_prev(t)) with NaN rows at index T and -1."""
    a = alphas_cumprod.detach().cpu().double()
    pairs = torch.full((len(a) + 2, 2), float("nan"), dtype=torch.float64)
    pairs[: len(a), 0] = a
    pairs[: len(a), 1] = alpha_prev(a, prev_timesteps.cpu(), final_alpha_cumprod)
    return pairs


def step_coefficient_table(
    pairs: torch.Tensor,
    eta: float,
    prediction_type: str,
    transforms_x0: bool,
    use_clipped_model_output: bool,
) -> torch.Tensor:
    """Float64 table (T + 2, 6) of the folded update coefficients from :func:`schedule_pairs`.

    NaN rows stay NaN, so an out-of-range timestep clamped to -1 or T gives NaN, never a wrong number.
    """
    return step_coefficients(pairs[:, 0], pairs[:, 1], eta, prediction_type, transforms_x0, use_clipped_model_output)


#: The zero pattern of every configuration, derived once at import.
UPDATE_TERMS: dict[tuple[str, bool, bool], UpdateTerms] = {
    (kind, transforms, clipped): derive_update_terms(kind, transforms, clipped)
    for kind in PREDICTION_TYPES
    for transforms in (False, True)
    for clipped in (False, True)
}
