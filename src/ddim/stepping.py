"""The public methods of a DDIM sampling scheduler, shared by ``ddim.DDIMScheduler``, ``ddim.DDIMParallelScheduler``
and their ``ddim.diffusers`` subclasses: ``set_timesteps``, ``step``, ``previous_timestep``, ``_get_variance``
and the forward process. Every one of them asks the scheduler's :class:`ddim.plan.StepPlan`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal, overload

import numpy as np
import torch

from ddim.forward_process import ForwardProcess
from ddim.noise import Generator, step_noise
from ddim.output import DDIMSchedulerOutput
from ddim.plan import StepPlan, batch_final_alpha, landing_rule, make_plan, step_variance
from ddim.tensor_checks import Timestep, check_floating, check_step_tensors
from ddim.thresholding import X0Transform, x0_transform_of
from ddim.timesteps import TIMESTEP_SPACINGS, as_timestep_grid, check_grid, check_num_inference_steps, spaced_timesteps
from ddim.validation import ArgumentValueError, check_choice, check_real

#: Plans a scheduler keeps for repeated ``set_timesteps`` calls with unchanged arguments.
MAX_CACHED_PLANS = 8


def check_eta(eta: object) -> float:
    """eta as a float after checking it is a finite real number >= 0 (0: DDIM, 1: DDPM-like)."""
    if type(eta) is float and 0.0 <= eta < float("inf"):  # the common case, without the slower checks
        return eta
    return check_real("eta", eta, 0.0)


def check_renoise(renoise_model_output: object, sample: torch.Tensor, use_clipped_model_output: bool) -> None:
    """A renoise output is a floating tensor shaped like the sample, and excludes ``use_clipped_model_output``
    (which takes the noise direction from the clipped x0 instead)."""
    renoise = check_floating("renoise_model_output", renoise_model_output)
    if renoise.shape != sample.shape:
        raise ArgumentValueError(
            f"renoise_model_output shape {tuple(renoise.shape)} must equal sample shape {tuple(sample.shape)}"
        )
    if use_clipped_model_output:
        raise ArgumentValueError(
            "renoise_model_output and use_clipped_model_output=True both say where the noise direction comes "
            "from; pass one of them"
        )


class PlannedScheduler:
    """A scheduler holding a step plan (:mod:`ddim.plan`): made by ``set_timesteps``, read through :attr:`plan`."""

    config: Any
    alphas_cumprod: torch.Tensor
    final_alpha_cumprod: torch.Tensor
    num_inference_steps: int | None
    timesteps: torch.Tensor
    _plan: StepPlan | None
    _plans: dict[tuple[Any, ...], StepPlan]

    @property
    def plan(self) -> StepPlan:
        """The current step plan; ``ValueError`` before ``set_timesteps``."""
        plan = self._plan
        if plan is None:
            raise ArgumentValueError(
                f"{type(self).__name__} has no timesteps yet; call scheduler.set_timesteps(num_inference_steps) first"
            )
        return plan

    def install_plan(self, plan: StepPlan, key: tuple[Any, ...] | None = None) -> None:
        """Make ``plan`` current (and keep it for ``key``, the arguments that made it)."""
        if key is not None:
            if len(self._plans) >= MAX_CACHED_PLANS:
                self._plans.clear()
            self._plans[key] = plan
        self._plan = plan
        self.timesteps = plan.timesteps
        self.num_inference_steps = plan.num_inference_steps

    def x0_transform(self) -> X0Transform:
        """What the config makes the step do to the predicted x0: nothing, clipping or dynamic thresholding."""
        return x0_transform_of(self.config)

    def scale_model_input(self, sample: torch.Tensor, timestep: Timestep | None = None) -> torch.Tensor:
        """Return ``sample`` unchanged (DDIM does not scale model inputs)."""
        return sample


class DDIMStepping(PlannedScheduler, ForwardProcess):
    """Timesteps and stepping of a sampling scheduler."""

    output_class: Any = DDIMSchedulerOutput
    #: Where eta > 0 noise comes from: "torch" (drawn as diffusers draws it) or "kernel" (drawn inside
    #: the fused kernel from per-step seeds; see ddim.kernels.kernel_noise).
    noise_source: str = "torch"
    #: Whether the plan also holds the parallel scheduler's batched landing (final alpha 1).
    batched_plan: ClassVar[bool] = False

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    ) -> None:
        """Choose the N sampling timesteps (descending ``timesteps``) and make the step plan.

        Grid: see :func:`ddim.timesteps.spaced_timesteps`; each step lands on ``t - T // N``
        (diffusers' rule) unless ``config.prev_timestep_from_grid`` is set or the spacing is
        ``quadratic``: then it lands on the next grid point, the last on the final alpha
        (:func:`ddim.plan.landing_rule`). ``timesteps`` (not in diffusers' DDIM; what
        ``retrieve_timesteps`` looks for) is a custom strictly decreasing grid in [0, T), stepped grid
        point to grid point; ``num_inference_steps`` is then optional (if given it must equal its
        length). Raises ``ValueError`` for N outside 1..T or a grid that leaves [0, T). A call with the
        arguments and config of an earlier one reuses that call's plan (and its tables).
        """
        config = self.config
        if timesteps is None and type(num_inference_steps) is int:
            key = (
                num_inference_steps,
                device,
                config.timestep_spacing,
                config.steps_offset,
                config.get("prev_timestep_from_grid", False),
                id(self.alphas_cumprod),
                id(self.final_alpha_cumprod),
            )
            plan = self._plans.get(key)
            if plan is not None:
                self.install_plan(plan)
                return
        else:
            key = None
        total = int(config.num_train_timesteps)
        if timesteps is not None:
            grid = as_timestep_grid(timesteps, total)
            if num_inference_steps is not None and num_inference_steps != len(grid):
                raise ArgumentValueError(
                    f"num_inference_steps={num_inference_steps!r} does not match the {len(grid)} custom timesteps; "
                    "pass only timesteps, or num_inference_steps equal to their number"
                )
            rule = landing_rule(config.timestep_spacing, True, custom_grid=True)
        else:
            grid = self._spaced_grid(num_inference_steps, total)
            rule = landing_rule(config.timestep_spacing, config.get("prev_timestep_from_grid", False))
        final = float(self.final_alpha_cumprod)
        grid_option = config.get("prev_timestep_from_grid", False)
        batch_final = batch_final_alpha(grid_option, final) if self.batched_plan else None
        plan = make_plan(self.alphas_cumprod, final, grid, rule, device, batch_final_alpha=batch_final)
        self.install_plan(plan, key)

    def _spaced_grid(self, num_inference_steps: int | None, total: int) -> np.ndarray:
        if num_inference_steps is None:
            raise ArgumentValueError("set_timesteps needs num_inference_steps or timesteps; both are None")
        n = check_num_inference_steps(num_inference_steps, total)
        spacing = self.config.timestep_spacing
        check_choice("timestep_spacing", spacing, TIMESTEP_SPACINGS)
        offset = int(self.config.steps_offset)
        grid = spaced_timesteps(spacing, total, n, offset)
        if grid.max() >= total:
            raise ArgumentValueError(
                f"steps_offset={offset} with num_inference_steps={n} puts timestep {int(grid.max())} outside "
                f"[0, num_train_timesteps={total}); use fewer steps or a smaller steps_offset"
            )
        check_grid(grid, total)
        return grid

    def previous_timestep(self, timestep: int) -> int:
        """The timestep a step from ``timestep`` lands on under the current grid (-1: the final alpha)."""
        if self._plan is None:
            raise ArgumentValueError("previous_timestep() called before set_timesteps()")
        return self._plan.previous_timestep(timestep)

    def step_variance(self, timestep: Timestep, prev_timestep: Timestep | None = None) -> torch.Tensor:
        """sigma_t^2 / eta^2 = (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev) (DDIM paper, eq. 16).

        Float32 from ``alphas_cumprod``, as diffusers' ``_get_variance`` (this method under diffusers' name
        too); a negative ``prev_timestep`` means the final alpha; ``None`` means where ``step`` lands from
        ``timestep`` (after ``set_timesteps``), so it is the variance the step applies. Ints or integer
        tensors of any shape (elementwise; a tensor on an accelerator is not read).
        """
        if prev_timestep is not None:
            return step_variance(self.alphas_cumprod, float(self.final_alpha_cumprod), timestep, prev_timestep)
        if self._plan is None:
            raise ArgumentValueError("_get_variance(timestep) without prev_timestep needs set_timesteps() first")
        return self._plan.variance(timestep)

    _get_variance = step_variance  # diffusers' name

    @overload
    def step(
        self,
        model_output: torch.Tensor,
        timestep: Timestep,
        sample: torch.Tensor,
        eta: float = ...,
        use_clipped_model_output: bool = ...,
        generator: Generator = ...,
        variance_noise: torch.Tensor | None = ...,
        return_dict: Literal[True] = ...,
        *,
        renoise_model_output: torch.Tensor | None = ...,
    ) -> DDIMSchedulerOutput: ...

    @overload
    def step(
        self,
        model_output: torch.Tensor,
        timestep: Timestep,
        sample: torch.Tensor,
        eta: float = ...,
        use_clipped_model_output: bool = ...,
        generator: Generator = ...,
        variance_noise: torch.Tensor | None = ...,
        *,
        return_dict: Literal[False],
        renoise_model_output: torch.Tensor | None = ...,
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    @overload
    def step(
        self,
        model_output: torch.Tensor,
        timestep: Timestep,
        sample: torch.Tensor,
        eta: float = ...,
        use_clipped_model_output: bool = ...,
        generator: Generator = ...,
        variance_noise: torch.Tensor | None = ...,
        return_dict: bool = ...,
        *,
        renoise_model_output: torch.Tensor | None = ...,
    ) -> DDIMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]: ...

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Timestep,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: Generator = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
        *,
        renoise_model_output: torch.Tensor | None = None,
    ) -> DDIMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One reverse step x_t -> x_{t-1} (DDIM paper, eqs. 12 and 16; the paper form is :func:`ddim.ddim_step`).

        ``timestep`` may be a Python or numpy int, a 0-dim tensor on any device, or a 1-D tensor with
        one timestep per batch row. A tensor timestep on an accelerator is never read on the host
        (no synchronisation): coefficients are gathered on the device, and an out-of-range value
        yields NaN instead of a wrong table entry. ``eta`` > 0 adds ``sigma_t * z`` with z from
        ``variance_noise`` or drawn from ``generator`` (as diffusers draws it).

        ``renoise_model_output`` (not in diffusers): the output the noise direction is taken from, x0 still
        coming from ``model_output``: CFG++ (arXiv 2406.08070) passes the guided output as ``model_output`` and
        the unconditional one here (see :func:`ddim.paper_step.cfg_pp_step`).
        """
        plan = self._plan
        if plan is None:
            raise ArgumentValueError(
                "step() called before set_timesteps(); call scheduler.set_timesteps(num_inference_steps)"
            )
        if not (
            isinstance(model_output, torch.Tensor)
            and isinstance(sample, torch.Tensor)
            and model_output.shape == sample.shape
            and model_output.is_floating_point()
            and sample.is_floating_point()
        ):
            check_step_tensors(model_output, sample)  # raises, naming what is wrong
        if type(eta) is not float or not 0.0 <= eta < float("inf"):
            eta = check_eta(eta)
        if renoise_model_output is not None:
            check_renoise(renoise_model_output, sample, use_clipped_model_output)
        rule = plan.rule(self.config, eta, use_clipped_model_output, split=renoise_model_output is not None)
        if eta > 0 and variance_noise is None and self.noise_source != "torch":
            if renoise_model_output is not None:
                raise ArgumentValueError(
                    f"noise_source={self.noise_source!r} does not combine with renoise_model_output; "
                    "use noise_source='torch'"
                )
            coefficients = rule.coefficients(timestep, sample)
            prev_sample, x0 = rule.apply_kernel_noise(sample, model_output, coefficients, self.noise_source, generator)
        else:
            noise = step_noise(eta, generator, variance_noise, model_output, sample) if eta > 0 else None
            coefficients = rule.coefficients(timestep, sample)
            prev_sample, x0 = rule.apply(sample, model_output, coefficients, noise, renoise_model_output)
        if not return_dict:
            return (prev_sample, x0)
        output: DDIMSchedulerOutput = self.output_class(prev_sample=prev_sample, pred_original_sample=x0)
        return output
