"""``DDIMParallelScheduler``: diffusers' DDIM scheduler for parallel sampling (ParaDiGMS, arXiv 2305.16317).

Parallel sampling refines a window of timesteps at once: the model runs on a batch whose rows sit at
different timesteps, and the pipeline steps every row with :meth:`ParallelStepping.batch_step_no_noise`,
the noise having been drawn in advance. ``step`` is the sequential DDIM step.
"""

from __future__ import annotations

from typing import Any

import torch

from ddim.output import DDIMParallelSchedulerOutput
from ddim.plan import batch_final_alpha, step_variance
from ddim.scheduler import DDIMScheduler
from ddim.stepping import DDIMStepping, check_eta
from ddim.tensor_checks import Timestep, check_step_tensors
from ddim.validation import ArgumentValueError


class ParallelStepping(DDIMStepping):
    """``step`` plus the batched, noise-free step of diffusers' ``DDIMParallelScheduler``, shared by
    ``ddim.DDIMParallelScheduler`` and ``ddim.diffusers.DDIMParallelScheduler``. Its plan holds a second
    landing for the batched step: the step's, except that a landing past timestep 0 uses abar = 1, as
    diffusers hard-codes it whatever ``set_alpha_to_one`` (the final alpha with ``prev_timestep_from_grid``)."""

    output_class: Any = DDIMParallelSchedulerOutput
    _is_ode_scheduler = True
    batched_plan = True

    def batch_step_no_noise(
        self,
        model_output: torch.Tensor,
        timesteps: Timestep,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
    ) -> torch.Tensor:
        """x_prev of every row, each at its own timestep, without the noise term (DDIM paper, eq. 12):

            x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps

        ``timesteps`` holds one timestep per batch row (or one for all); each row lands where ``step``
        lands from it, except that a landing past timestep 0 uses abar = 1 (diffusers' numbers; the
        final alpha with ``prev_timestep_from_grid=True``). Device timesteps are not read on the host.
        diffusers allows only ``eta=0``; here ``eta > 0`` gives the step's mean (the pipeline adds
        ``sigma * z`` itself).
        """
        if self._plan is None:
            raise ArgumentValueError(
                "batch_step_no_noise() called before set_timesteps(); call scheduler.set_timesteps(num_inference_steps)"
            )
        check_step_tensors(model_output, sample)
        eta = check_eta(eta)
        zeros = torch.zeros_like(sample) if eta > 0 else None
        rule = self._plan.rule(self.config, eta, use_clipped_model_output, self._plan.batch_landing)
        prev_sample, _ = rule.apply(sample, model_output, rule.coefficients(timesteps, sample), zeros)
        return prev_sample

    def _batch_get_variance(self, t: Timestep, prev_t: Timestep) -> torch.Tensor:
        """sigma^2 / eta^2 (eq. 16) elementwise from abar at ``t`` to abar at ``prev_t`` (negative: 1, as
        diffusers' batched step; the final alpha with ``prev_timestep_from_grid=True``), float32."""
        grid_option = self.config.get("prev_timestep_from_grid", False)
        final = batch_final_alpha(grid_option, float(self.final_alpha_cumprod))
        return step_variance(self.alphas_cumprod, final, t, prev_t, ("t", "prev_t"))


class DDIMParallelScheduler(ParallelStepping, DDIMScheduler):
    """diffusers' ``DDIMParallelScheduler`` (0.42.1): :class:`ddim.DDIMScheduler` plus
    ``batch_step_no_noise`` and ``_batch_get_variance`` (see :class:`ParallelStepping`).

    Same constructor, config and numbers as diffusers' class; ``step`` returns a
    :class:`ddim.output.DDIMParallelSchedulerOutput`.
    """
