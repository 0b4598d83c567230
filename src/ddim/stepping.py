"""``DDIMStepping``: the public methods of a DDIM sampling scheduler, shared by ``ddim.DDIMScheduler``
and ``ddim.diffusers.DDIMScheduler``: ``set_timesteps``, ``step``, ``previous_timestep`` and the
forward process."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, overload

import numpy as np
import torch

from ddim.coefficients import schedule_variance
from ddim.forward_process import ForwardProcess
from ddim.noise import Generator
from ddim.output import DDIMSchedulerOutput
from ddim.step_tables import StepTables, check_eta
from ddim.tensor_checks import Timestep, check_step_tensors, timestep_index
from ddim.timesteps import (
    TIMESTEP_SPACINGS,
    as_timestep_grid,
    check_grid,
    check_num_inference_steps,
    diffusers_prev_timesteps,
    grid_prev_timesteps,
    spaced_timesteps,
)
from ddim.validation import ArgumentValueError, check_choice, check_int


class DDIMStepping(StepTables, ForwardProcess):
    """Timesteps and stepping of a sampling scheduler (see :class:`ddim.step_tables.StepTables` for what
    the class provides)."""

    output_class: Any = DDIMSchedulerOutput

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    ) -> None:
        """Choose the N sampling timesteps (descending ``timesteps``) and tabulate the step coefficients.

        Grid: see :func:`ddim.timesteps.spaced_timesteps`; each step lands on ``t - T // N``
        (diffusers' rule) unless ``config.prev_timestep_from_grid`` is set or the spacing is
        ``quadratic``: then it lands on the next grid point, the last on the final alpha.
        ``timesteps`` (not in diffusers' DDIM; what ``retrieve_timesteps`` looks for) is a custom
        strictly decreasing grid in [0, T), stepped grid point to grid point; ``num_inference_steps``
        is then optional (if given it must equal its length). Raises ``ValueError`` for N outside
        1..T or a grid that leaves [0, T).
        """
        total = int(self.config.num_train_timesteps)
        if timesteps is not None:
            custom = as_timestep_grid(timesteps, total)
            if num_inference_steps is not None and num_inference_steps != len(custom):
                raise ArgumentValueError(
                    f"num_inference_steps={num_inference_steps!r} does not match the {len(custom)} custom timesteps; "
                    "pass only timesteps, or num_inference_steps equal to their number"
                )
            self.install_grid(custom, grid_prev_timesteps(custom, total), len(custom), device)
            return
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
        if spacing == "quadratic" or self.config.get("prev_timestep_from_grid", False):
            prev = grid_prev_timesteps(grid, total)
        else:
            prev = diffusers_prev_timesteps(np.arange(total, dtype=np.int64), total, n)
        self.install_grid(grid, prev, n, device)

    def previous_timestep(self, timestep: int) -> int:
        """The timestep a step from ``timestep`` lands on under the current grid (-1: the final alpha)."""
        if self.num_inference_steps is None:
            raise ArgumentValueError("previous_timestep() called before set_timesteps()")
        total = len(self._prev_timesteps)
        t = check_int("timestep", timestep, 0, total - 1)
        return max(int(self._prev_timesteps[t]), -1)  # diffusers' rule gives any negative number

    def _get_variance(self, timestep: Timestep, prev_timestep: Timestep | None = None) -> torch.Tensor:
        """sigma_t^2 / eta^2 = (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev) (DDIM paper, eq. 16).

        As diffusers' ``_get_variance``: float32 from ``alphas_cumprod``; a negative ``prev_timestep``
        means the final alpha; ``None`` means ``timestep - T // N`` (after ``set_timesteps``). Ints or
        integer tensors of any shape (elementwise; a tensor on an accelerator is not read).
        """
        total = int(self.config.num_train_timesteps)
        t = timestep_index("timestep", timestep, total)
        if prev_timestep is None:
            if self.num_inference_steps is None:
                raise ArgumentValueError("_get_variance(timestep) without prev_timestep needs set_timesteps() first")
            prev = t - total // self.num_inference_steps
        else:
            prev = timestep_index("prev_timestep", prev_timestep, total, negative=True)
        return schedule_variance(self.alphas_cumprod, t, prev.to(t.device), self.final_alpha_cumprod)

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
    ) -> DDIMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One reverse step x_t -> x_{t-1} (DDIM paper, eqs. 12 and 16; the paper form is :func:`ddim.ddim_step`).

        ``timestep`` may be a Python or numpy int, a 0-dim tensor on any device, or a 1-D tensor with
        one timestep per batch row. A tensor timestep on an accelerator is never read on the host
        (no synchronisation): coefficients are gathered on the device, and an out-of-range value
        yields NaN instead of a wrong table entry. ``eta`` > 0 adds ``sigma_t * z`` with z from
        ``variance_noise`` or drawn from ``generator`` (as diffusers draws it).
        """
        if self.num_inference_steps is None:
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
        eta = check_eta(eta)
        prev_sample, pred_original = self.apply_step(
            model_output, timestep, sample, eta, use_clipped_model_output, generator, variance_noise
        )
        if not return_dict:
            return (prev_sample, pred_original)
        output: DDIMSchedulerOutput = self.output_class(prev_sample=prev_sample, pred_original_sample=pred_original)
        return output
