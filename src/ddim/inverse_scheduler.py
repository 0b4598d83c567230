"""``DDIMInverseScheduler``: diffusers' inverse scheduler, DDIM steps run from low to high noise.

With eta = 0 a DDIM step is an invertible map once the model output is fixed; this class is
diffusers' way to run it backwards (an ascending grid whose step at t climbs from ``t - T // N``, or
the initial alpha, to t). :func:`ddim.invert` is the exact reverse of a sampling grid instead.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal, overload

import numpy as np
import torch

from ddim.config import ConfigMixin, records_config, warn_ignored_keys
from ddim.output import DDIMSchedulerOutput
from ddim.plan import make_plan
from ddim.scheduler import DDIMScheduler, compatible_classes
from ddim.stepping import PlannedScheduler
from ddim.tensor_checks import Timestep, check_step_tensors
from ddim.timesteps import check_grid, check_num_inference_steps, spaced_timesteps
from ddim.validation import ArgumentTypeError, ArgumentValueError, check_bool, check_choice, check_str_choice

INVERSE_TIMESTEP_SPACINGS = ("leading", "trailing")


class InverseStepping(PlannedScheduler):
    """Timesteps and stepping of diffusers' inverse scheduler, shared by ``ddim.DDIMInverseScheduler``
    and ``ddim.diffusers.DDIMInverseScheduler`` (see :class:`DDIMInverseScheduler` for the step). Its plan's
    steps climb: from the landing of t (diffusers' ``t - T // N``) up to t."""

    output_class: Any = DDIMSchedulerOutput

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Ascending grid: ``leading`` k * (T // N) + steps_offset, or ``trailing`` (reversed), as diffusers."""
        total = int(self.config.num_train_timesteps)
        n = check_num_inference_steps(num_inference_steps, total)
        spacing = self.config.timestep_spacing
        check_choice("timestep_spacing", spacing, INVERSE_TIMESTEP_SPACINGS)
        descending = spaced_timesteps(spacing, total, n, int(self.config.steps_offset))
        check_grid(descending, total)
        ascending = np.ascontiguousarray(descending[::-1])
        plan = make_plan(self.alphas_cumprod, float(self.final_alpha_cumprod), ascending, "offset", device, climb=True)
        self.install_plan(plan)

    @overload
    def step(
        self,
        model_output: torch.Tensor,
        timestep: Timestep,
        sample: torch.Tensor,
        return_dict: Literal[True] = ...,
    ) -> DDIMSchedulerOutput: ...

    @overload
    def step(
        self, model_output: torch.Tensor, timestep: Timestep, sample: torch.Tensor, return_dict: Literal[False]
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    @overload
    def step(
        self, model_output: torch.Tensor, timestep: Timestep, sample: torch.Tensor, return_dict: bool = ...
    ) -> DDIMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]: ...

    def step(
        self, model_output: torch.Tensor, timestep: Timestep, sample: torch.Tensor, return_dict: bool = True
    ) -> DDIMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One inversion step x_s -> x_t for grid timestep t (see the class docstring)."""
        host = timestep if not isinstance(timestep, torch.Tensor) else None
        if isinstance(timestep, torch.Tensor) and timestep.ndim == 0 and timestep.device.type == "cpu":
            host = int(timestep)  # a CPU scalar is read anyway; a device tensor is never synchronised
        if self.num_inference_steps is not None and isinstance(host, (int, np.integer)) and not isinstance(host, bool):
            last = int(self.timesteps[-1])
            if int(host) > last:
                raise ArgumentValueError(
                    f"timestep={int(host)} is beyond the inversion grid, whose last timestep is {last} "
                    f"(num_inference_steps={self.num_inference_steps})"
                )
        if self.num_inference_steps is None:
            raise ArgumentValueError(
                "step() called before set_timesteps(); call scheduler.set_timesteps(num_inference_steps)"
            )
        check_step_tensors(model_output, sample)
        rule = self.plan.rule(self.config, 0.0, False)
        prev_sample, pred_original = rule.apply(sample, model_output, rule.coefficients(timestep, sample), None)
        if not return_dict:
            return (prev_sample, pred_original)
        output: DDIMSchedulerOutput = self.output_class(prev_sample=prev_sample, pred_original_sample=pred_original)
        return output


class DDIMInverseScheduler(InverseStepping, ConfigMixin):
    """diffusers' ``DDIMInverseScheduler`` (0.42.1): DDIM steps run from low to high noise.

    Same constructor, config keys and numbers. The grid is ascending; a step at grid timestep t
    maps x at s = min(t - T // N, T - 1) to x at t (abar_s, or the initial alpha when s < 0:
    1 with ``set_alpha_to_one``, else abar_0)::

        x0 = (x_s - sqrt(1 - abar_s) eps) / sqrt(abar_s)          (clipped if clip_sample)
        x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps              (DDIM paper, eq. 12 with eta = 0)

    The model output is for the model called at t on x_s, as diffusers' pipelines do. As in
    diffusers, the constructor also takes a ``DDIMScheduler``'s arguments (``thresholding``, ...):
    they do not apply to an inversion and are ignored with one warning naming them; the deprecated
    ``set_alpha_to_zero`` stands for ``set_alpha_to_one``. Deviations: a ``trailing`` grid always has
    exactly N timesteps, and a step at a timestep above the grid's last one raises ``ValueError``
    instead of leaving the grid.
    """

    _compatibles = ["DDIMScheduler", "DDIMInverseScheduler"]
    _deprecated_kwargs = ["set_alpha_to_zero"]
    order = 1
    init_noise_sigma = 1.0

    @records_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        clip_sample_range: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
        **kwargs: Any,
    ) -> None:
        check_str_choice("timestep_spacing", timestep_spacing, INVERSE_TIMESTEP_SPACINGS)
        set_alpha_to_one = self._sampling_arguments(kwargs, set_alpha_to_one)
        # The sampling scheduler validates every shared argument and builds the same schedule.
        forward = DDIMScheduler(**{k: v for k, v in self.config.items() if k in DDIMScheduler.init_keys()})
        self.betas = forward.betas
        self.alphas = forward.alphas
        self.alphas_cumprod = forward.alphas_cumprod
        self.initial_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.final_alpha_cumprod = self.initial_alpha_cumprod  # the end where a climb starts
        self.num_inference_steps = None
        self.timesteps = torch.arange(int(num_train_timesteps), dtype=torch.int64)
        self._plan = None
        self._plans = {}

    def _sampling_arguments(self, kwargs: dict[str, Any], set_alpha_to_one: bool) -> bool:
        """``set_alpha_to_one`` after the deprecated ``set_alpha_to_zero``; a ``DDIMScheduler``'s other
        arguments are ignored with one warning; any other keyword is a ``TypeError``."""
        renamed = kwargs.pop("set_alpha_to_zero", None)
        if renamed is not None:
            warnings.warn(
                "set_alpha_to_zero is deprecated; pass set_alpha_to_one (the same meaning)", FutureWarning, stacklevel=4
            )
            set_alpha_to_one = check_bool("set_alpha_to_zero", renamed)
            self.register_to_config(set_alpha_to_one=set_alpha_to_one)
        unknown = sorted(set(kwargs) - set(DDIMScheduler.init_keys()))
        if unknown:
            raise ArgumentTypeError(
                f"DDIMInverseScheduler got unexpected keyword arguments {unknown}; it takes its own arguments "
                f"and those of DDIMScheduler ({', '.join(DDIMScheduler.init_keys())})"
            )
        if kwargs:
            warn_ignored_keys(sorted(kwargs), type(self).__name__, stacklevel=5)
        return set_alpha_to_one

    def __len__(self) -> int:
        return int(self.config.num_train_timesteps)

    @property
    def compatibles(self) -> list[type]:
        """Scheduler classes whose configs this one accepts: ours, and diffusers' when diffusers is loaded."""
        return compatible_classes(type(self), tuple(self._compatibles))
