"""``DDIMScheduler``: a drop-in replacement for diffusers' scheduler of the same name.

The class is thin: the schedule (:mod:`ddim.schedules`), the grid (:mod:`ddim.timesteps`), the
coefficients (:mod:`ddim.coefficients`) and the update (:mod:`ddim.update`) are pure functions; the
stepping methods are :class:`ddim.stepping.DDIMStepping`'s. The class holds the step plan
(:mod:`ddim.plan`) that ``set_timesteps`` makes, and reads its config at call time.

Reproduced diffusers quirks (defaults; see docs/compatibility.md):

- the step lands on ``t - T // N`` for every spacing, which for ``trailing``/``linspace`` (or T not
  divisible by N) is not the next grid point;
- ``steps_offset`` only shifts ``leading`` grids;
- ``alphas_cumprod`` is float32, so coefficients derive from float32-rounded alphas (widened to
  float64 here before any further arithmetic).

Deviations (diffusers would crash or read a wrong table entry): a ``leading`` grid pushed out of
range by ``steps_offset`` raises ``ValueError``; a ``trailing`` grid always has exactly N timesteps.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from ddim.config import ConfigMixin, records_config
from ddim.prediction import PREDICTION_TYPES, PredictionType
from ddim.schedules import (
    BETA_SCHEDULES,
    BetaSchedule,
    alphas_cumprod_from_betas,
    betas_from_array,
    check_betas,
    check_num_train_timesteps,
    check_steps_offset,
    make_betas,
    rescale_zero_terminal_snr,
)
from ddim.stepping import DDIMStepping
from ddim.timesteps import TIMESTEP_SPACINGS, TimestepSpacing
from ddim.validation import check_bool, check_real, check_str_choice

#: Names of the diffusers schedulers whose configs are interchangeable with this one.
COMPATIBLE_SCHEDULER_NAMES = (
    "DDIMScheduler",
    "DDPMScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "EulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "DEISMultistepScheduler",
    "UniPCMultistepScheduler",
    "DPMSolverSDEScheduler",
    "EDMEulerScheduler",
)


def compatible_classes(own: type, names: tuple[str, ...]) -> list[type]:
    """``own`` and, when diffusers is already imported, its classes named in ``names``."""
    found: list[type] = [own]
    library = sys.modules.get("diffusers")
    if library is not None:
        for name in names:
            cls = getattr(library, name, None)
            if isinstance(cls, type) and cls not in found:
                found.append(cls)
    return found


class DDIMScheduler(DDIMStepping, ConfigMixin):
    """Denoising Diffusion Implicit Models sampler (Song, Meng & Ermon, arXiv 2010.02502).

    Same constructor, attributes and numbers as diffusers' ``DDIMScheduler`` (0.42.1); see
    ``shared/spec/ddim-scheduler.md`` and the README for the meaning of each argument. One more
    argument, after diffusers' 15: ``prev_timestep_from_grid`` (default False, diffusers' numbers):
    each step lands on the next grid point instead of ``t - T // N``, the last on the final alpha.

    Ranges stricter than diffusers' (which accepts any int and fails later): ``num_train_timesteps`` in
    1..100000 (``ddim.schedules.MAX_TRAIN_TIMESTEPS``: the tables stay a few MB) and ``steps_offset`` in
    0..num_train_timesteps - 1 (a ``leading`` grid shifted otherwise lies outside [0, T) whatever the steps).
    """

    _compatibles = list(COMPATIBLE_SCHEDULER_NAMES)
    order = 1
    init_noise_sigma = 1.0
    extra_options = {"prev_timestep_from_grid": False}

    @records_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: BetaSchedule = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: PredictionType = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: TimestepSpacing = "leading",
        rescale_betas_zero_snr: bool = False,
        prev_timestep_from_grid: bool = False,
    ) -> None:
        total = check_num_train_timesteps(num_train_timesteps)
        for name, value in (("beta_start", beta_start), ("beta_end", beta_end)):
            check_real(name, value, 0.0, 1.0, open_minimum=True)  # a beta is a variance fraction in (0, 1]
        check_real("clip_sample_range", clip_sample_range, 0.0, open_minimum=True)
        check_real("sample_max_value", sample_max_value, 0.0, open_minimum=True)
        check_real("dynamic_thresholding_ratio", dynamic_thresholding_ratio, 0.0, 1.0, open_minimum=True)
        for name, flag in (
            ("clip_sample", clip_sample),
            ("set_alpha_to_one", set_alpha_to_one),
            ("thresholding", thresholding),
            ("rescale_betas_zero_snr", rescale_betas_zero_snr),
            ("prev_timestep_from_grid", prev_timestep_from_grid),
        ):
            check_bool(name, flag)
        check_steps_offset(steps_offset, total)
        check_str_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
        check_str_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        check_str_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)

        if trained_betas is not None:
            betas = betas_from_array(trained_betas, total)
        else:
            betas = make_betas(beta_schedule, total, float(beta_start), float(beta_end))
        source = (
            "trained_betas"
            if trained_betas is not None
            else f"beta_schedule={beta_schedule!r} with beta_start={beta_start!r}, beta_end={beta_end!r}"
        ) + f", num_train_timesteps={total}"
        if trained_betas is None:
            check_betas(betas, "betas", source)
        if rescale_betas_zero_snr:
            betas = rescale_zero_terminal_snr(betas)  # its last beta is exactly 1 (zero terminal SNR)
            check_betas(betas, "betas", source + " rescaled to zero terminal SNR (rescale_betas_zero_snr=True)")
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = alphas_cumprod_from_betas(betas)
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.num_inference_steps = None
        self.timesteps = torch.arange(total - 1, -1, -1, dtype=torch.int64)
        self._plan = None
        self._plans = {}

    def __len__(self) -> int:
        return int(self.config.num_train_timesteps)

    @property
    def compatibles(self) -> list[type]:
        """Scheduler classes whose configs this one accepts: ours, and diffusers' when diffusers is loaded."""
        return compatible_classes(type(self), tuple(self._compatibles))
