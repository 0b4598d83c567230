"""``DDIMSchedulerLike``: what the loops, inversion and the log-prob step need of a scheduler.

``ddim.DDIMScheduler``, ``ddim.DDIMParallelScheduler`` and their ``ddim.diffusers`` subclasses provide it:
a diffusers-style ``set_timesteps``/``step`` and the step plan (:class:`ddim.plan.StepPlan`) that
``set_timesteps`` makes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from ddim.plan import StepPlan


@runtime_checkable
class DDIMSchedulerLike(Protocol):
    """A DDIM sampling scheduler of this package (any of its classes)."""

    config: Any
    alphas_cumprod: torch.Tensor
    timesteps: torch.Tensor
    num_inference_steps: int | None

    @property
    def plan(self) -> StepPlan:
        """The step plan of the current grid (``ValueError`` before ``set_timesteps``)."""

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    ) -> None: ...

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """A diffusers-style step taking ``eta``, ``use_clipped_model_output``, ``generator``, ``return_dict``."""
