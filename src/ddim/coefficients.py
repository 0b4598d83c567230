"""The DDIM step's coefficients in their two forms: the paper's alpha-bar pair, and six folded numbers.

Notation (DDIM paper, arXiv 2010.02502, whose alpha_t is our alpha_bar_t):

==================  ===============================  ==============================================
name in the code    paper                            meaning
==================  ===============================  ==============================================
``alpha_bar_t``     alpha_t                          abar at the timestep the model is called at
``alpha_bar_prev``  alpha_{t-1} (alpha_{tau_{i-1}})  abar where the step lands
``sigma_t``         sigma_t(eta), eq. 16             standard deviation of the added noise
``x0``              "predicted x0", eq. 9            the model's estimate of the clean sample
``direction``       sqrt(1 - alpha_{t-1} - sigma^2)  weight of epsilon, "direction pointing to x_t"
==================  ===============================  ==============================================

The step from x_t to x_prev (eq. 12) is::

    x0     = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)                          # eq. 9
    x_prev = sqrt(alpha_bar_prev) x0 + sqrt(1 - alpha_bar_prev - sigma_t^2) eps + sigma_t z   # eq. 12
    sigma_t = eta sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_prev)  # eq. 16

The paper's form is the pair (alpha_bar_t, alpha_bar_prev) (:func:`ddim.ddim_step` reads it). For every
prediction type x0 and eps are linear in (x_t, model output m) (:func:`ddim.prediction.prediction_coefficients`),
so the fast paths fold the step into six numbers per timestep, a :class:`HostRow` of Python floats or
:class:`DeviceRows` of a device table::

    x0     = X0_X * x + X0_M * m            (then clipped or thresholded, if configured)
    x_prev = PREV_X0 * x0 + PREV_X * x + PREV_M * m + STD * z

``PREV_X0`` is non-zero only when x0 is clipped/thresholded (the non-linear part cannot be folded); ``STD``
is sigma_t. With ``use_clipped_model_output`` eps is re-derived from the clipped x0,
eps = (x - sqrt(alpha_bar_t) x0) / sqrt(1 - alpha_bar_t).

Tables have T + 2 rows: row t for training timestep t in [0, T), and two rows of NaN at index T and -1
(the last row), so that an out-of-range index clamped into [-1, T] yields NaN, never a wrong number.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ddim.prediction import PREDICTION_TYPES, prediction_coefficients
from ddim.validation import ArgumentValueError, check_choice

X0_X, X0_M, PREV_X0, PREV_X, PREV_M, STD = range(6)
NUM_COLUMNS = 6


class HostRow(tuple[float, ...]):
    """The folded form at a host timestep: six Python floats (X0_X, X0_M, PREV_X0, PREV_X, PREV_M, STD)."""

    __slots__ = ()

    def __new__(cls, values: Iterable[float]) -> HostRow:
        row = super().__new__(cls, values)
        if len(row) != NUM_COLUMNS:
            raise ArgumentValueError(f"coefficients must hold {NUM_COLUMNS} values, got {len(row)}")
        return row


@dataclass(frozen=True)
class DeviceRows:
    """The folded form on a device: rows of ``table`` picked by ``index``, gathered where they are used.

    ``table`` is (rows, 6). With ``index`` (0-dim or (b,), on the table's device) it is a coefficient
    table of T + 2 rows with NaN rows at T and -1: a value outside [0, T) selects a NaN row and nothing
    is read on the host. Without ``index`` the table is the rows themselves (one, or one per leading
    element of the sample).
    """

    table: torch.Tensor
    index: torch.Tensor | None = None

    def rows(self) -> torch.Tensor:
        """(b, 6): the selected rows (index_select: indexing with a 0-dim tensor would sync)."""
        if self.index is None:
            return self.table.reshape(-1, NUM_COLUMNS)
        total = self.table.shape[0] - 2
        index = self.index.clamp(-1, total).reshape(-1) % (total + 2)
        return self.table.index_select(0, index)


#: A step's coefficients in the folded form: host floats, or device rows.
Folded = HostRow | DeviceRows


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
    alpha_bar_t, alpha_bar_prev = torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.6, dtype=torch.float64)
    values = step_coefficients(
        alpha_bar_t, alpha_bar_prev, 0.0, prediction_type, transforms_x0, use_clipped_model_output
    )
    row = values.tolist()
    return UpdateTerms(
        x0_is_model_output=row[X0_X] == 0.0 and row[X0_M] == 1.0,
        prev_x0=row[PREV_X0] != 0.0,
        prev_x=row[PREV_X] != 0.0,
        prev_m=row[PREV_M] != 0.0,
    )


def alpha_bar_at(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, final_alpha_cumprod: float) -> torch.Tensor:
    """alpha_bar at each timestep, the final alpha where a timestep is negative (a landing past timestep 0).

    Timesteps past the table (>= T) give NaN. The one place that reads "alpha_bar at a landing".
    """
    last = len(alphas_cumprod) - 1
    picked = alphas_cumprod[timesteps.clamp(0, last)]
    final = torch.full_like(picked, final_alpha_cumprod)
    nan = torch.full_like(picked, float("nan"))
    return torch.where(timesteps < 0, final, torch.where(timesteps <= last, picked, nan))


def ddim_variance(alpha_bar_t: torch.Tensor, alpha_bar_prev: torch.Tensor) -> torch.Tensor:
    """sigma_t^2 / eta^2 = (1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)  (eq. 16)."""
    return (1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)


def schedule_variance(
    alphas_cumprod: torch.Tensor,
    timestep: torch.Tensor,
    prev_timestep: torch.Tensor,
    final_alpha_cumprod: float,
) -> torch.Tensor:
    """sigma_t^2 / eta^2 (eq. 16) from alpha_bar at ``timestep`` to alpha_bar at ``prev_timestep`` (negative: the
    final alpha), in the dtype of ``alphas_cumprod`` (diffusers' float32), on the timesteps' device; a timestep
    outside the table gives NaN."""
    table = alphas_cumprod.to(timestep.device)
    nan_if_negative = torch.where(timestep < 0, torch.full_like(timestep, len(table)), timestep)
    alpha_bar_t = alpha_bar_at(table, nan_if_negative, final_alpha_cumprod)
    return ddim_variance(alpha_bar_t, alpha_bar_at(table, prev_timestep.to(timestep.device), final_alpha_cumprod))


def step_coefficients(
    alpha_bar_t: torch.Tensor,
    alpha_bar_prev: torch.Tensor,
    eta: float,
    prediction_type: str,
    transforms_x0: bool,
    use_clipped_model_output: bool,
) -> torch.Tensor:
    """The six folded coefficients (last dim) for the pair (alpha_bar_t, alpha_bar_prev).

    Elementwise torch arithmetic in the dtype of the inputs (float64 for tables), so the same formulas
    serve the tabulated eager path and a traced ``torch.compile`` graph.
    """
    x0_x, x0_m, eps_x, eps_m = prediction_coefficients(alpha_bar_t, prediction_type)  # eq. 9
    sqrt_alpha_bar_t, sqrt_one_minus_t = alpha_bar_t.sqrt(), (1 - alpha_bar_t).sqrt()
    sqrt_alpha_bar_prev = alpha_bar_prev.sqrt()
    # eta = 0 needs no variance, which is undefined at alpha_bar_t = 1 (the first step of an inversion).
    sigma_t = eta * ddim_variance(alpha_bar_t, alpha_bar_prev).sqrt() if eta > 0 else torch.zeros_like(alpha_bar_t)
    # With eta <= 1 the radicand is >= 0 in exact arithmetic; clamp rounding-level negatives
    # (e.g. zero terminal SNR at eta = 1), leave a genuinely negative one (eta > 1) to give NaN.
    radicand = 1 - alpha_bar_prev - sigma_t**2
    if eta <= 1:
        radicand = radicand.clamp(min=0.0)
    direction = radicand.sqrt()
    zero = torch.zeros_like(alpha_bar_t)
    # eq. 12: x_prev = sqrt(alpha_bar_prev) x0 + direction * eps, with x0 and eps linear in (x, m) unless
    # x0 is transformed.
    if not transforms_x0:
        prev = (zero, sqrt_alpha_bar_prev * x0_x + direction * eps_x, sqrt_alpha_bar_prev * x0_m + direction * eps_m)
    elif use_clipped_model_output:  # eps from the transformed x0: (x - sqrt(alpha_bar_t) x0) / sqrt(1 - alpha_bar_t)
        prev = (
            sqrt_alpha_bar_prev - direction * sqrt_alpha_bar_t / sqrt_one_minus_t,
            direction / sqrt_one_minus_t,
            zero,
        )
    else:
        prev = (sqrt_alpha_bar_prev, direction * eps_x, direction * eps_m)
    columns = [zero] * NUM_COLUMNS
    columns[X0_X], columns[X0_M], columns[STD] = x0_x, x0_m, sigma_t
    columns[PREV_X0], columns[PREV_X], columns[PREV_M] = prev
    return torch.stack(columns, dim=-1)


def alpha_pairs(
    alphas_cumprod: torch.Tensor, landing: torch.Tensor, final_alpha_cumprod: float, climb: bool = False
) -> torch.Tensor:
    """Float64 table (T + 2, 2) of (alpha_bar_from, alpha_bar_to) per timestep, NaN rows at index T and -1.

    A sampling step from t goes from alpha_bar_t to alpha_bar at ``landing[t]``; a ``climb`` (an
    inversion step) the other way, from alpha_bar at ``landing[t]`` up to alpha_bar_t.
    """
    alphas = alphas_cumprod.detach().cpu().double()
    pairs = torch.full((len(alphas) + 2, 2), float("nan"), dtype=torch.float64)
    at_landing = alpha_bar_at(alphas, landing.cpu(), final_alpha_cumprod)
    pairs[: len(alphas)] = torch.stack((at_landing, alphas) if climb else (alphas, at_landing), dim=1)
    return pairs


#: The zero pattern of every configuration, derived once at import.
UPDATE_TERMS: dict[tuple[str, bool, bool], UpdateTerms] = {
    (kind, transforms, clipped): derive_update_terms(kind, transforms, clipped)
    for kind in PREDICTION_TYPES
    for transforms in (False, True)
    for clipped in (False, True)
}
