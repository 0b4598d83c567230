"""``DDIMParallelScheduler``: diffusers' DDIM scheduler for parallel sampling (ParaDiGMS, arXiv 2305.16317).

Parallel sampling refines a window of timesteps at once: the model runs on a batch whose rows sit at
different timesteps, and the pipeline steps every row with :meth:`ParallelStepping.batch_step_no_noise`,
the noise having been drawn in advance. ``step`` is the sequential DDIM step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ddim.coefficients import schedule_pairs, schedule_variance
from ddim.output import DDIMParallelSchedulerOutput
from ddim.scheduler import DDIMScheduler
from ddim.step_tables import check_eta
from ddim.stepping import DDIMStepping
from ddim.tensor_checks import Timestep, check_step_tensors, timestep_index
from ddim.validation import ArgumentValueError

#: The name of the alpha-pair table of the batched step (see ``StepTables.apply_step``).
BATCH_PAIRS = "batch-pairs"


class ParallelStepping(DDIMStepping):
    """``step`` plus the batched, noise-free step of diffusers' ``DDIMParallelScheduler``, shared by
    ``ddim.DDIMParallelScheduler`` and ``ddim.diffusers.DDIMParallelScheduler``."""

    output_class: Any = DDIMParallelSchedulerOutput
    _is_ode_scheduler = True

    def _batch_final_alpha(self) -> float:
        """abar after timestep 0 in the batched step: 1, as diffusers hard-codes it whatever
        ``set_alpha_to_one``; the final alpha of ``step`` with ``prev_timestep_from_grid``."""
        return float(self.final_alpha_cumprod) if self.config.get("prev_timestep_from_grid", False) else 1.0

    def install_grid(
        self, grid: np.ndarray, prev_timesteps: np.ndarray, num_inference_steps: int, device: str | torch.device | None
    ) -> None:
        """The step's grid and tables, and the alpha pairs of the batched step."""
        super().install_grid(grid, prev_timesteps, num_inference_steps, device)
        pairs = schedule_pairs(self.alphas_cumprod, self._prev_timesteps, self._batch_final_alpha())
        self.store_pairs(BATCH_PAIRS, pairs, device)

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
        if self.num_inference_steps is None:
            raise ArgumentValueError(
                "batch_step_no_noise() called before set_timesteps(); call scheduler.set_timesteps(num_inference_steps)"
            )
        check_step_tensors(model_output, sample)
        eta = check_eta(eta)
        zeros = torch.zeros_like(sample) if eta > 0 else None
        prev_sample, _ = self.apply_step(
            model_output, timesteps, sample, eta, use_clipped_model_output, None, zeros, BATCH_PAIRS
        )
        return prev_sample

    def _batch_get_variance(self, t: Timestep, prev_t: Timestep) -> torch.Tensor:
        """sigma^2 / eta^2 (eq. 16) elementwise from abar at ``t`` to abar at ``prev_t`` (negative: 1, as
        diffusers' batched step; the final alpha with ``prev_timestep_from_grid=True``), float32."""
        total = int(self.config.num_train_timesteps)
        t_index = timestep_index("t", t, total)
        prev_index = timestep_index("prev_t", prev_t, total, negative=True).to(t_index.device)
        return schedule_variance(self.alphas_cumprod, t_index, prev_index, self._batch_final_alpha())


class DDIMParallelScheduler(ParallelStepping, DDIMScheduler):
    """diffusers' ``DDIMParallelScheduler`` (0.42.1): :class:`ddim.DDIMScheduler` plus
    ``batch_step_no_noise`` and ``_batch_get_variance`` (see :class:`ParallelStepping`).

    Same constructor, config and numbers as diffusers' class; ``step`` returns a
    :class:`ddim.output.DDIMParallelSchedulerOutput`.
    """
