"""The forward process q(x_t | x_0) of a scheduler: ``add_noise`` and the v-prediction target ``get_velocity``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ddim.tensor_checks import (
    Timestep,
    as_index,
    check_broadcasts_to,
    check_floating,
    check_timestep_shape,
    check_timestep_values,
    leading_shape,
)
from ddim.update import compute_dtype
from ddim.validation import ArgumentTypeError


class ForwardProcess:
    """``add_noise`` and ``get_velocity`` for a class holding ``alphas_cumprod``; they never modify it."""

    alphas_cumprod: torch.Tensor

    def _forward_coefficients(
        self, timesteps: Timestep | Sequence[int], like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """sqrt(abar_t) and sqrt(1 - abar_t) for each timestep, shaped to broadcast over ``like``'s batch."""
        key = ("forward", like.device, compute_dtype(like.dtype))
        table = self._tables_forward().get(key)
        if table is None:
            alphas = self.alphas_cumprod.detach().cpu().double()
            table = torch.stack([alphas.sqrt(), (1 - alphas).sqrt()], dim=1).to(like.device, compute_dtype(like.dtype))
            self._tables_forward()[key] = table
        index = torch.as_tensor(timesteps).to(like.device)
        if index.is_floating_point() or index.dtype in (torch.bool, torch.complex64, torch.complex128):
            raise ArgumentTypeError(f"timesteps must be integers, got dtype {index.dtype}")
        check_timestep_shape("timesteps", index, like, any_row_shape=True)
        index = as_index(index).reshape(-1)
        if index.device.type == "cpu" and not torch.compiler.is_compiling():
            check_timestep_values(index, table.shape[0])
        rows = table.index_select(0, index)
        shape = leading_shape(rows.shape[0], like.shape)
        return rows[:, 0].reshape(shape), rows[:, 1].reshape(shape)

    def _tables_forward(self) -> dict[Any, torch.Tensor]:
        cache = self.__dict__.get("_forward_cache")
        if cache is None:
            cache = {}
            self.__dict__["_forward_cache"] = cache
        return cache

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: Timestep | Sequence[int]
    ) -> torch.Tensor:
        """Forward process q(x_t | x_0): sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise (DDIM paper, eq. 4).

        ``timesteps`` holds one timestep per batch row (or one for all). The scheduler is not modified.
        """
        check_floating("original_samples", original_samples)
        check_floating("noise", noise)
        check_broadcasts_to("noise", noise, original_samples)
        sqrt_alpha, sqrt_one_minus = self._forward_coefficients(timesteps, original_samples)
        work = compute_dtype(original_samples.dtype)
        noisy = sqrt_alpha * original_samples.to(work) + sqrt_one_minus * noise.to(work)
        return noisy.to(original_samples.dtype)

    def get_velocity(
        self, sample: torch.Tensor, noise: torch.Tensor, timesteps: Timestep | Sequence[int]
    ) -> torch.Tensor:
        """The v-prediction target v = sqrt(abar_t) noise - sqrt(1 - abar_t) x_0 (arXiv 2202.00512, sec. 4)."""
        check_floating("sample", sample)
        check_floating("noise", noise)
        check_broadcasts_to("noise", noise, sample)
        sqrt_alpha, sqrt_one_minus = self._forward_coefficients(timesteps, sample)
        work = compute_dtype(sample.dtype)
        velocity = sqrt_alpha * noise.to(work) - sqrt_one_minus * sample.to(work)
        return velocity.to(sample.dtype)
