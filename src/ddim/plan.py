"""The step plan: one immutable object that says where every step of a grid lands, and with which coefficients.

``set_timesteps`` builds a :class:`StepPlan` with :func:`make_plan` (a pure function of the schedule, the
grid and the landing rule); the scheduler holds it as ``scheduler.plan``, and every reader asks it:
``step`` and the parallel batch step (coefficients, :meth:`StepPlan.rule`), ``_get_variance``
(:meth:`StepPlan.variance`), ``previous_timestep``, the log-prob step (:meth:`StepPlan.ddpo_landing`),
inversion and exact inversion (:meth:`StepPlan.grid_steps`), the loops (:meth:`StepPlan.model_timesteps`).
Because the landing is data made once, no two readers can disagree about it.

Notation as in :mod:`ddim.coefficients` (alpha_bar_t at the timestep, alpha_bar_prev at the landing).
The landing rule (:func:`landing_rule`, :func:`landing_timesteps`):

- ``"offset"`` (diffusers' rule, the default): a step from t lands on t - T // N, for every spacing;
  a negative landing means the final alpha;
- ``"grid"``: the next grid point below t, -1 (the final alpha) after the last one (``prev_timestep_from_grid``,
  quadratic and custom grids).

Variants put different data into the plan, nothing else: the inverse scheduler's steps climb (its pairs
run from the landing up to t) on an ascending grid; the parallel scheduler adds a second landing for its
batched step, whose final alpha is 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from ddim.coefficients import alpha_pairs, schedule_variance
from ddim.step_rule import StepRule, make_step_rule
from ddim.tensor_checks import Timestep, timestep_index
from ddim.thresholding import x0_transform_of
from ddim.timesteps import grid_prev_timesteps
from ddim.validation import check_int

LandingRule = Literal["offset", "grid"]


def landing_rule(timestep_spacing: str, prev_timestep_from_grid: bool, custom_grid: bool = False) -> LandingRule:
    """``"grid"`` for a custom or quadratic grid or with ``prev_timestep_from_grid``, else diffusers' ``"offset"``."""
    return "grid" if custom_grid or timestep_spacing == "quadratic" or prev_timestep_from_grid else "offset"


def landing_timesteps(rule: LandingRule, grid: np.ndarray, num_train_timesteps: int) -> np.ndarray:
    """Where a step from each training timestep lands, int64 (T,); negative: the final alpha.

    ``"offset"``: t - T // N (diffusers' rule, N the grid's length); ``"grid"``: the largest grid point below t.
    """
    if rule == "offset":
        return np.arange(num_train_timesteps, dtype=np.int64) - num_train_timesteps // len(grid)
    return grid_prev_timesteps(grid, num_train_timesteps)


def batch_final_alpha(prev_timestep_from_grid: bool, final_alpha_cumprod: float) -> float:
    """alpha_bar past timestep 0 in the parallel scheduler's batched step: 1, as diffusers hard-codes it
    whatever ``set_alpha_to_one``; the step's final alpha with ``prev_timestep_from_grid``."""
    return final_alpha_cumprod if prev_timestep_from_grid else 1.0


@dataclass(eq=False)
class Landing:
    """Where a step from each training timestep lands and the alpha-bar pair it steps between.

    Attributes:
        name: which landing of its plan it is (``"step"``, ``"batch"``, ``"ddpo"``): the key of its rules.
        timesteps: int64 (T,): the landing of each t (negative: past timestep 0, the final alpha).
        pairs: float64 (T + 2, 2): (alpha_bar_from, alpha_bar_to) of the step at t; NaN rows at T and -1.
        final_alpha_cumprod: alpha_bar of a landing past timestep 0.
    """

    name: str
    timesteps: torch.Tensor
    pairs: torch.Tensor
    final_alpha_cumprod: float
    device_pairs: dict[torch.device, torch.Tensor] = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls,
        name: str,
        alphas_cumprod: torch.Tensor,
        landing: np.ndarray | torch.Tensor,
        final: float,
        climb: bool = False,
    ) -> Landing:
        """The landing of every timestep and its alpha pairs (a ``climb`` steps from the landing up to t)."""
        timesteps = torch.as_tensor(np.asarray(landing, dtype=np.int64).copy())
        return cls(name, timesteps, alpha_pairs(alphas_cumprod, timesteps, final, climb), final)

    def pairs_on(self, device: torch.device) -> torch.Tensor:
        """The pairs on ``device`` (copied once; prepared on the plan's device when it is built)."""
        pairs = self.device_pairs.get(device)
        if pairs is None:
            pairs = self.pairs.to(device)
            self.device_pairs[device] = pairs
        return pairs


@dataclass(frozen=True)
class GridStep:
    """Sampling step ``index``: the model is called at ``timestep`` (alpha_bar = ``alpha``), lands on ``alpha_to``."""

    index: int
    timestep: int
    alpha: float
    alpha_to: float


@dataclass(eq=False)
class StepPlan:
    """A grid, where each of its steps lands, and the folded coefficients of each step (see the module doc).

    Attributes:
        timesteps: the grid in walk order (descending for sampling, ascending for the inverse), int64, on
            the device ``set_timesteps`` was given.
        landing: the landing of ``step``, ``_get_variance`` and ``previous_timestep``.
        batch_landing: the parallel scheduler's batched step's landing (final alpha 1), else ``None``.
        alphas_cumprod: the float32 schedule (``_get_variance`` computes in it, as diffusers).
    """

    timesteps: torch.Tensor
    landing: Landing
    batch_landing: Landing | None
    alphas_cumprod: torch.Tensor
    memo: dict[Any, Any] = field(default_factory=dict, repr=False)

    @property
    def num_inference_steps(self) -> int:
        return len(self.timesteps)

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def previous_timestep(self, timestep: int) -> int:
        """The timestep a step from ``timestep`` lands on (-1: the final alpha)."""
        t = check_int("timestep", timestep, 0, self.num_train_timesteps - 1)
        return max(int(self.landing.timesteps[t]), -1)  # diffusers' rule gives any negative number

    def variance(
        self, timestep: Timestep, prev_timestep: Timestep | None = None, landing: Landing | None = None
    ) -> torch.Tensor:
        """sigma_t^2 / eta^2 (DDIM paper, eq. 16) of the step from ``timestep``, landing on ``prev_timestep``
        or, when ``None``, where the step lands under ``landing`` (default: the step's), so it is the
        variance the step applies (see :func:`step_variance`)."""
        landing = self.landing if landing is None else landing
        if prev_timestep is None:
            t = timestep_index("timestep", timestep, self.num_train_timesteps)
            prev_timestep = landing.timesteps.to(t.device)[t]
        return step_variance(self.alphas_cumprod, landing.final_alpha_cumprod, timestep, prev_timestep)

    def ddpo_landing(self) -> Landing:
        """DDPO's landing: the step's, clamped into [0, T - 1] (its last step lands on alpha_bar_0)."""
        landing = self.memo.get("ddpo")
        if landing is None:
            clamped = self.landing.timesteps.clamp(0, self.num_train_timesteps - 1)
            landing = Landing.build("ddpo", self.alphas_cumprod, clamped, self.landing.final_alpha_cumprod)
            self.memo["ddpo"] = landing
        return landing

    def rule(
        self,
        config: Any,
        eta: float,
        use_clipped_model_output: bool,
        landing: Landing | None = None,
        split: bool = False,
    ) -> StepRule:
        """The step rule (coefficients and update) for ``config``'s prediction type and x0 transform, read now;
        ``split``: the noise direction comes from another output than x0 (CFG++)."""
        landing = self.landing if landing is None else landing
        key = (
            landing.name,
            config.prediction_type,
            config.clip_sample,
            config.clip_sample_range,
            getattr(config, "thresholding", False),
            getattr(config, "dynamic_thresholding_ratio", None),
            getattr(config, "sample_max_value", None),
            eta,
            use_clipped_model_output,
            split,
        )
        rule = self.memo.get(key)
        if rule is None:
            transform = x0_transform_of(config)
            rule = make_step_rule(landing, config.prediction_type, transform, use_clipped_model_output, eta, split)
            self.memo[key] = rule
        return rule

    def grid_steps(self) -> tuple[GridStep, ...]:
        """The grid's steps in walk order, each with its alpha pair (what inversion walks)."""
        steps = self.memo.get("grid_steps")
        if steps is None:
            pairs = self.landing.pairs
            steps = tuple(
                GridStep(index, t, float(pairs[t, 0]), float(pairs[t, 1]))
                for index, t in enumerate(int(t) for t in self.timesteps.tolist())
            )
            self.memo["grid_steps"] = steps
        return steps

    def model_timesteps(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """(N, batch_size) int64 on ``device``: row i holds the grid's i-th timestep for every batch row
        (what a loop passes to the model), made once per batch size and device."""
        key = ("model_timesteps", batch_size, device)
        table = self.memo.get(key)
        if table is None:
            steps = self.timesteps.to(device=device, dtype=torch.int64)
            table = steps.unsqueeze(1).expand(len(steps), batch_size).contiguous()
            self.memo[key] = table
        return table


def step_variance(
    alphas_cumprod: torch.Tensor,
    final_alpha_cumprod: float,
    timestep: Timestep,
    prev_timestep: Timestep,
    names: tuple[str, str] = ("timestep", "prev_timestep"),
) -> torch.Tensor:
    """sigma_t^2 / eta^2 (DDIM paper, eq. 16) from ``timestep`` to ``prev_timestep`` (negative: the final alpha),
    ints or integer tensors of any shape (elementwise; a tensor on an accelerator is not read), float32 as
    diffusers' ``_get_variance`` computes it; ``names`` are the caller's names of the two arguments."""
    total = len(alphas_cumprod)
    t = timestep_index(names[0], timestep, total)
    prev = timestep_index(names[1], prev_timestep, total, negative=True)
    return schedule_variance(alphas_cumprod, t, prev.to(t.device), final_alpha_cumprod)


def make_plan(
    alphas_cumprod: torch.Tensor,
    final_alpha_cumprod: float,
    grid: np.ndarray,
    rule: LandingRule,
    device: str | torch.device | None,
    *,
    climb: bool = False,
    batch_final_alpha: float | None = None,
) -> StepPlan:
    """The plan of ``grid`` (walk order, validated): landings by ``rule`` (:func:`landing_timesteps`).

    ``climb``: steps run from the landing up to t (the inverse scheduler). ``batch_final_alpha``: also a
    landing for the parallel scheduler's batched step, with this final alpha.
    """
    total = len(alphas_cumprod)
    target = torch.device(device) if device is not None else torch.device("cpu")
    landing_array = landing_timesteps(rule, grid, total)
    landing = Landing.build("step", alphas_cumprod, landing_array, final_alpha_cumprod, climb)
    if batch_final_alpha is None:
        batch = None
    else:
        batch = Landing.build("batch", alphas_cumprod, landing_array, batch_final_alpha)
    for prepared in (landing, batch):
        if prepared is not None and target.type != "cpu":
            prepared.pairs_on(target)
    timesteps = torch.from_numpy(np.ascontiguousarray(grid, dtype=np.int64).copy()).to(target)
    return StepPlan(timesteps, landing, batch, alphas_cumprod)
