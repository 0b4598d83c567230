"""The machinery under every DDIM scheduler class: the grid, its coefficient tables and one step's update.

A class built on :class:`StepTables` sets ``config``, ``alphas_cumprod``, ``final_alpha_cumprod``,
``num_inference_steps`` and ``timesteps``, calls :meth:`StepTables.install_grid` from its own
``set_timesteps``, and calls :meth:`StepTables.apply_step` from its own ``step``. Each step goes from
abar_from to abar_to, the two columns of the table that :meth:`StepTables.step_pairs` builds (a
sampling step from abar_t down to abar_prev; an inversion step the other way).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ddim.coefficients import UpdateTerms, schedule_pairs, step_coefficient_table, step_coefficients, update_terms
from ddim.noise import Generator, randn_like_diffusers
from ddim.prediction import PREDICTION_TYPES
from ddim.tensor_checks import (
    INTEGER_DTYPES,
    Timestep,
    as_index,
    check_floating,
    check_host_timestep,
    check_timestep_shape,
    check_timestep_values,
)
from ddim.thresholding import X0Transform
from ddim.transfer import to_device_async
from ddim.update import CoefficientGather, Coefficients, HostRow, compute_dtype, records_gradients, torch_update
from ddim.validation import ArgumentTypeError, ArgumentValueError, check_choice, check_real


def check_eta(eta: object) -> float:
    """eta as a float after checking it is a finite real number >= 0 (0: DDIM, 1: DDPM-like)."""
    if type(eta) is float and 0.0 <= eta < float("inf"):  # the common case, without the slower checks
        return eta
    return check_real("eta", eta, 0.0)


class StepTables:
    """Grid, float64 coefficient tables (built once per configuration) and the update of one step."""

    config: Any
    alphas_cumprod: torch.Tensor
    final_alpha_cumprod: torch.Tensor
    num_inference_steps: int | None
    timesteps: torch.Tensor
    _prev_timesteps: torch.Tensor
    _tables: dict[tuple[Any, ...], Any]
    #: Where eta > 0 noise comes from: "torch" (drawn as diffusers draws it) or "kernel" (drawn inside
    #: the fused kernel from per-step seeds; see ddim.kernels.kernel_noise).
    noise_source: str = "torch"

    def step_pairs(self, prev_timesteps: torch.Tensor) -> torch.Tensor:
        """Float64 (T + 2, 2) table of (abar_from, abar_to) per timestep: here (abar_t, abar_prev(t))."""
        return schedule_pairs(self.alphas_cumprod, prev_timesteps, float(self.final_alpha_cumprod))

    def install_grid(
        self, grid: np.ndarray, prev_timesteps: np.ndarray, num_inference_steps: int, device: str | torch.device | None
    ) -> None:
        """Store a validated grid and the other end of every training timestep's step; drop cached tables."""
        self.num_inference_steps = num_inference_steps
        self.timesteps = torch.from_numpy(grid.copy()).to(device)
        self._prev_timesteps = torch.from_numpy(np.asarray(prev_timesteps, dtype=np.int64).copy())
        self._tables = {}
        self.store_pairs("pairs", self.step_pairs(self._prev_timesteps), device)

    def store_pairs(self, name: str, pairs: torch.Tensor, device: str | torch.device | None = None) -> str:
        """Keep a (T + 2, 2) alpha-pair table under ``name`` (on the CPU, and on ``device``) until the next
        grid; :meth:`apply_step` steps from it when given that name. Returns ``name``."""
        self._tables[(name, torch.device("cpu"))] = pairs
        if device is not None:
            self._tables[(name, torch.device(device))] = pairs.to(device)
        return name

    # ----------------------------------------------------------------- tables
    def _x0_transform(self) -> X0Transform:
        config = self.config
        if config.get("thresholding", False):
            return X0Transform(
                threshold_ratio=float(config.dynamic_thresholding_ratio),
                threshold_max=float(config.sample_max_value),
            )
        if config.clip_sample:
            return X0Transform(clip_range=float(config.clip_sample_range))
        return X0Transform()

    def _table_key(
        self, eta: float, use_clipped: bool, transform: X0Transform, pairs: str = "pairs"
    ) -> tuple[Any, ...]:
        return (pairs, self.config.prediction_type, transform.active, use_clipped and transform.active, eta)

    def _host_table(self, key: tuple[Any, ...]) -> tuple[torch.Tensor, list[HostRow], UpdateTerms]:
        """(float64 table, the same as nested lists, structural terms) for a table key; built once."""
        cached = self._tables.get(key)
        if cached is None:
            pairs_name, prediction_type, transforms_x0, use_clipped, eta = key
            check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
            pairs = self._tables[(pairs_name, torch.device("cpu"))]
            table = step_coefficient_table(pairs, eta, prediction_type, transforms_x0, use_clipped)
            rows = [HostRow(row) for row in table.tolist()]
            cached = (table, rows, update_terms(prediction_type, transforms_x0, use_clipped))
            self._tables[key] = cached
        return cached

    def _device_table(self, key: tuple[Any, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The table of ``key`` as a tensor on ``device`` in ``dtype``; copied once per device and dtype."""
        device_key = (*key, device, dtype)
        cached = self._tables.get(device_key)
        if cached is None:
            cached = to_device_async(self._host_table(key)[0], device, dtype)
            self._tables[device_key] = cached
        return cached

    # ----------------------------------------------------------------- one step
    def apply_step(
        self,
        model_output: torch.Tensor,
        timestep: Timestep,
        sample: torch.Tensor,
        eta: float,
        use_clipped_model_output: bool,
        generator: Generator,
        variance_noise: torch.Tensor | None,
        pairs: str = "pairs",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_to, x0)`` of one step at ``timestep`` (inputs already checked by the caller, except the noise);
        ``pairs`` names the table of alpha pairs that :meth:`install_grid` stored (``"pairs"``: the step's)."""
        transform = self._x0_transform()
        if eta > 0 and variance_noise is None and self.noise_source != "torch":
            from ddim.kernels.kernel_noise import kernel_noise_update

            coefficients, _ = self._coefficients(timestep, sample, eta, use_clipped_model_output, transform, pairs)
            per_element = isinstance(timestep, torch.Tensor) and timestep.ndim > 1
            return kernel_noise_update(
                self.noise_source, sample, model_output, per_element, coefficients, transform, generator
            )
        noise = None
        if eta > 0:
            if generator is not None and variance_noise is not None:
                raise ArgumentValueError(
                    "pass either generator or variance_noise, not both (variance_noise is the noise itself)"
                )
            if variance_noise is None:
                noise = randn_like_diffusers(
                    model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype
                )
            else:
                check_floating("variance_noise", variance_noise)
                if variance_noise.shape != sample.shape:
                    raise ArgumentValueError(
                        f"variance_noise shape {tuple(variance_noise.shape)} "
                        f"must equal sample shape {tuple(sample.shape)}"
                    )
                noise = variance_noise
        coefficients, terms = self._coefficients(timestep, sample, eta, use_clipped_model_output, transform, pairs)
        if (
            sample.is_cuda
            and not (isinstance(timestep, torch.Tensor) and timestep.ndim > 1)  # per element: the torch path
            and not torch.compiler.is_compiling()
        ):  # one Triton kernel when it handles the tensors
            from ddim import kernels

            if kernels.fused_update_available(sample, model_output, noise):
                if records_gradients(sample, model_output, noise):
                    from ddim.kernels.autograd import differentiable_fused_update

                    return differentiable_fused_update(sample, model_output, coefficients, terms, transform, noise)
                return kernels.fused_update(sample, model_output, coefficients, transform, noise)
        return torch_update(sample, model_output, coefficients, terms, transform, noise)

    def _coefficients(
        self,
        timestep: Timestep,
        sample: torch.Tensor,
        eta: float,
        use_clipped: bool,
        transform: X0Transform,
        pairs_name: str = "pairs",
    ) -> tuple[Coefficients, UpdateTerms]:
        """The coefficient row(s) for ``timestep``: six Python floats for a host timestep, else a
        :class:`ddim.update.CoefficientGather` of device rows (a (b, 6) tensor while compiling)."""
        total = self._prev_timesteps.shape[0]
        key = self._table_key(eta, use_clipped, transform, pairs_name)
        if (
            isinstance(timestep, torch.Tensor)  # the common pipeline case first: a 0-dim CPU tensor, read once
            and timestep.ndim == 0
            and timestep.dtype in INTEGER_DTYPES
            and timestep.device.type == "cpu"
            and not torch.compiler.is_compiling()
        ):
            timestep = int(timestep)
        elif isinstance(timestep, torch.Tensor):
            if timestep.dtype not in INTEGER_DTYPES:
                raise ArgumentTypeError(f"timestep must be an integer tensor, got dtype {timestep.dtype}")
            check_timestep_shape("timestep", timestep, sample)
            index = as_index(timestep)
            if timestep.device.type == "cpu" and not torch.compiler.is_compiling():
                check_timestep_values(index, total)
            # index_select, not table[index]: indexing with a 0-dim tensor reads its value on the host.
            dtype = compute_dtype(sample.dtype)
            _, prediction_type, transforms_x0, use_clipped_x0, _ = key
            terms = update_terms(prediction_type, transforms_x0, use_clipped_x0)
            if torch.compiler.is_compiling():
                # Traced: gather (abar_from, abar_to) and derive the coefficients in the graph, where
                # the compiler fuses them into the update; no table is built while tracing.
                pairs = self._tables.get((pairs_name, sample.device))
                if pairs is None:
                    pairs = self._tables[(pairs_name, torch.device("cpu"))].to(sample.device)
                gathered = CoefficientGather(pairs, index.to(sample.device)).rows()
                rows = step_coefficients(
                    gathered[..., 0], gathered[..., 1], eta, prediction_type, transforms_x0, use_clipped_x0
                ).to(dtype)
                return rows, terms
            # Gathered where used (in the fused kernel on CUDA): no value is read on the host.
            return CoefficientGather(self._device_table(key, sample.device, dtype), index.to(sample.device)), terms
        t = check_host_timestep(timestep, total)
        _, rows_list, terms = self._host_table(key)
        return rows_list[t], terms

    def scale_model_input(self, sample: torch.Tensor, timestep: Timestep | None = None) -> torch.Tensor:
        """Return ``sample`` unchanged (DDIM does not scale model inputs)."""
        return sample
