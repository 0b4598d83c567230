"""A step rule: the folded coefficients of every step of one landing for one configuration, and the update.

A :class:`StepRule` is made once per (landing, prediction type, x0 transform, eta, use_clipped_model_output)
by :meth:`ddim.plan.StepPlan.rule`: a float64 (T + 2, 6) table of the folded coefficients
(:mod:`ddim.coefficients`), the same rows as Python floats for host timesteps, and copies of the table per
device and dtype for device timesteps. :meth:`StepRule.coefficients` picks a timestep's coefficients
(nothing is read on the host for a device timestep) and :meth:`StepRule.apply` runs the update: one Triton
kernel on CUDA when it handles the tensors, else :func:`ddim.update.torch_update`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import torch

from ddim.coefficients import DeviceRows, Folded, HostRow, UpdateTerms, step_coefficients, update_terms
from ddim.device_copy import to_device_async
from ddim.noise import Generator
from ddim.tensor_checks import (
    INTEGER_DTYPES,
    Timestep,
    check_host_timestep,
    check_timestep_shape,
    timestep_index,
)
from ddim.thresholding import X0Transform
from ddim.update import compute_dtype, records_gradients, torch_update
from ddim.validation import ArgumentTypeError

if TYPE_CHECKING:
    from ddim.plan import Landing


@dataclass(eq=False)
class StepRule:
    """Coefficients of every step of ``landing`` for one configuration, and the update that applies them."""

    landing: Landing
    prediction_type: str
    transform: X0Transform
    use_clipped_x0: bool
    eta: float
    split: bool
    terms: UpdateTerms
    num_train_timesteps: int
    device_tables: dict[tuple[torch.device, torch.dtype], torch.Tensor] = field(default_factory=dict, repr=False)
    _table: torch.Tensor | None = field(default=None, repr=False)
    _rows: list[HostRow] | None = field(default=None, repr=False)

    @property
    def table(self) -> torch.Tensor:
        """Float64 (T + 2, 6) folded coefficients of every timestep (NaN rows at T and -1), made on first use."""
        if self._table is None:
            self.tabulate()
        return cast(torch.Tensor, self._table)

    @property
    def host_rows(self) -> list[HostRow]:
        """The table's rows as Python floats (what a host timestep's step reads), made on first use."""
        if self._rows is None:
            self.tabulate()
        return cast(list[HostRow], self._rows)

    def tabulate(self) -> None:
        """Build the table and its host rows (not while tracing: a compiled step derives its rows in the graph)."""
        pairs = self.landing.pairs
        separate = self.transform.active or self.split
        self._table = step_coefficients(
            pairs[:, 0], pairs[:, 1], self.eta, self.prediction_type, separate, self.use_clipped_x0
        )
        self._rows = [HostRow(row) for row in self._table.tolist()]

    def device_table(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The table on ``device`` in ``dtype``, copied once per device and dtype without a host sync."""
        table = self.device_tables.get((device, dtype))
        if table is None:
            table = to_device_async(self.table, device, dtype)
            self.device_tables[(device, dtype)] = table
        return table

    def coefficients(self, timestep: Timestep, sample: torch.Tensor) -> Folded:
        """The coefficients of the step at ``timestep``: a :class:`HostRow` for a host timestep (a Python or
        numpy int, or a 0-dim CPU tensor, read once), else :class:`DeviceRows` gathered on the sample's device
        (no host read; an out-of-range entry gives NaN there)."""
        total = self.num_train_timesteps
        if type(timestep) is int and 0 <= timestep < total and self._rows is not None:  # the common case first
            return self._rows[timestep]
        if isinstance(timestep, torch.Tensor):
            if timestep.dtype not in INTEGER_DTYPES:
                raise ArgumentTypeError(f"timestep must be an integer tensor, got dtype {timestep.dtype}")
            compiling = torch.compiler.is_compiling()
            if timestep.ndim == 0 and timestep.device.type == "cpu" and not compiling:
                return self.host_rows[check_host_timestep(int(timestep), total)]
            check_timestep_shape("timestep", timestep, sample)
            index = timestep_index("timestep", timestep, total).to(sample.device)
            if compiling:
                # Traced: gather the alpha pairs and derive the coefficients in the graph, where the
                # compiler fuses them into the update; no table is built while tracing.
                pairs = DeviceRows(self.landing.pairs_on(sample.device), index).rows()
                rows = step_coefficients(
                    pairs[..., 0],
                    pairs[..., 1],
                    self.eta,
                    self.prediction_type,
                    self.transform.active,
                    self.use_clipped_x0,
                )
                return DeviceRows(rows.to(compute_dtype(sample.dtype)))
            return DeviceRows(self.device_table(sample.device, compute_dtype(sample.dtype)), index)
        return self.host_rows[check_host_timestep(timestep, total)]

    def apply(
        self,
        sample: torch.Tensor,
        model_output: torch.Tensor,
        coefficients: Folded,
        noise: torch.Tensor | None,
        renoise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_prev, x0)``: one Triton kernel on CUDA when it handles the tensors, else the torch update.

        ``renoise`` (a rule made with ``split``): the output the noise direction is taken from (CFG++).
        """
        if renoise is not None:
            return torch_update(sample, model_output, coefficients, self.terms, self.transform, noise, renoise)
        if sample.is_cuda and not torch.compiler.is_compiling() and not per_element(coefficients):
            from ddim import kernels

            if kernels.fused_update_available(sample, model_output, noise):
                if records_gradients(sample, model_output, noise):
                    from ddim.kernels.autograd import differentiable_fused_update

                    return differentiable_fused_update(
                        sample, model_output, coefficients, self.terms, self.transform, noise
                    )
                return kernels.fused_update(sample, model_output, coefficients, self.transform, noise)
        return torch_update(sample, model_output, coefficients, self.terms, self.transform, noise)

    def apply_kernel_noise(
        self,
        sample: torch.Tensor,
        model_output: torch.Tensor,
        coefficients: Folded,
        noise_source: str,
        generator: Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_prev, x0)`` of an eta > 0 step whose noise the fused kernel draws (``noise_source != "torch"``)."""
        from ddim.kernels.kernel_noise import kernel_noise_update

        return kernel_noise_update(
            noise_source, sample, model_output, per_element(coefficients), coefficients, self.transform, generator
        )


def per_element(coefficients: Folded) -> bool:
    """Whether the coefficients are gathered per element of several leading dimensions (the torch path's job)."""
    return isinstance(coefficients, DeviceRows) and coefficients.index is not None and coefficients.index.ndim > 1


def make_step_rule(
    landing: Landing,
    prediction_type: str,
    transform: X0Transform,
    use_clipped_model_output: bool,
    eta: float,
    split: bool = False,
) -> StepRule:
    """The rule of every step of ``landing`` for one configuration (its float64 table is made on first use).

    ``split``: x0 and the noise direction come from different outputs (CFG++), so the direction's
    coefficients stay apart from x0's, as when x0 is transformed.
    """
    use_clipped_x0 = use_clipped_model_output and transform.active
    terms = update_terms(prediction_type, transform.active or split, use_clipped_x0)
    total = landing.timesteps.shape[0]
    return StepRule(landing, prediction_type, transform, use_clipped_x0, eta, split, terms, total)
