"""``DDIMScheduler``: a drop-in replacement for diffusers' scheduler of the same name.

The class is thin: the schedule (:mod:`ddim.schedules`), the grid (:mod:`ddim.timesteps`), the
coefficients (:mod:`ddim.coefficients`) and the update (:mod:`ddim.update`) are pure functions. The
class holds the tables they produce and reads its config at call time.

Reproduced diffusers quirks (defaults; see README "Compatibility notes"):

- the step lands on ``t - T // N`` for every spacing, which for ``trailing``/``linspace`` (or T not
  divisible by N) is not the next grid point;
- ``steps_offset`` only shifts ``leading`` grids;
- ``alphas_cumprod`` is float32, so coefficients derive from float32-rounded alphas (widened to
  float64 here before any further arithmetic).

Deviations (diffusers would crash or read a wrong table entry): a ``leading`` grid pushed out of
range by ``steps_offset`` raises ``ValueError``; a ``trailing`` grid always has exactly N timesteps.
"""

from __future__ import annotations

import numbers
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ddim.coefficients import (
    UpdateTerms,
    schedule_pairs,
    step_coefficient_table,
    step_coefficients,
    update_terms,
)
from ddim.config import ConfigMixin, records_config
from ddim.noise import Generator, randn_like_diffusers
from ddim.output import DDIMSchedulerOutput
from ddim.schedules import (
    BETA_SCHEDULES,
    alphas_cumprod_from_betas,
    betas_from_array,
    make_betas,
    rescale_zero_terminal_snr,
)
from ddim.timesteps import (
    TIMESTEP_SPACINGS,
    as_timestep_grid,
    check_grid,
    check_num_inference_steps,
    diffusers_prev_timesteps,
    grid_prev_timesteps,
    spaced_timesteps,
)
from ddim.transfer import to_device_async
from ddim.update import CoefficientGather, Coefficients, HostRow, X0Transform, compute_dtype, ddim_update

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
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

Timestep = int | np.integer | torch.Tensor
#: Tensor dtypes accepted for a timestep.
INTEGER_DTYPES = frozenset(
    {torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32, torch.uint64}
)


def check_choice(name: str, value: object, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed values are {list(allowed)}")


def check_type(name: str, value: object, kind: type | tuple[type, ...], description: str) -> None:
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise TypeError(f"{name} must be {description}, got {value!r}")
    if not isinstance(value, kind):
        raise TypeError(f"{name} must be {description}, got {value!r} ({type(value).__name__})")


def check_eta(eta: object) -> float:
    """eta as a float after checking it is a real number >= 0."""
    if type(eta) is float and eta >= 0:  # the common case, without the slower abstract-class check
        return eta
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real):
        raise TypeError(f"eta must be a real number >= 0, got {eta!r} ({type(eta).__name__})")
    value = float(eta)
    if not value >= 0:
        raise ValueError(f"eta={value!r} is out of range; allowed values are eta >= 0 (0: DDIM, 1: DDPM-like)")
    return value


class DDIMStepping:
    """The stepping machinery, shared by :class:`DDIMScheduler` and ``ddim.diffusers.DDIMScheduler``.

    Needs ``config``, ``alphas_cumprod``, ``final_alpha_cumprod``, ``num_inference_steps`` and
    ``timesteps`` on the instance; everything else is derived and cached here.
    """

    config: Any
    alphas_cumprod: torch.Tensor
    final_alpha_cumprod: torch.Tensor
    num_inference_steps: int | None
    timesteps: torch.Tensor
    output_class: Any = DDIMSchedulerOutput

    # ----------------------------------------------------------------- timesteps
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
                raise ValueError(
                    f"num_inference_steps={num_inference_steps!r} does not match the {len(custom)} custom timesteps; "
                    "pass only timesteps, or num_inference_steps equal to their number"
                )
            self.install_grid(custom, grid_prev_timesteps(custom, total), len(custom), device)
            return
        if num_inference_steps is None:
            raise ValueError("set_timesteps needs num_inference_steps or timesteps; both are None")
        n = check_num_inference_steps(num_inference_steps, total)
        spacing = self.config.timestep_spacing
        check_choice("timestep_spacing", spacing, TIMESTEP_SPACINGS)
        offset = int(self.config.steps_offset)
        grid = spaced_timesteps(spacing, total, n, offset)
        if grid.max() >= total:
            raise ValueError(
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
            raise ValueError("previous_timestep() called before set_timesteps()")
        total = len(self._prev_timesteps)
        if isinstance(timestep, bool) or not 0 <= int(timestep) < total:
            raise ValueError(f"timestep={timestep!r} is out of range; allowed values are 0..{total - 1}")
        return max(int(self._prev_timesteps[int(timestep)]), -1)  # diffusers' rule gives any negative number

    def install_grid(
        self, grid: np.ndarray, prev_timesteps: np.ndarray, num_inference_steps: int, device: str | torch.device | None
    ) -> None:
        """Store a validated grid and the landing timestep of every training timestep; drop cached tables."""
        self.num_inference_steps = num_inference_steps
        self.timesteps = torch.from_numpy(grid.copy()).to(device)
        self._prev_timesteps = torch.from_numpy(np.asarray(prev_timesteps, dtype=np.int64).copy())
        self._tables: dict[tuple[Any, ...], Any] = {}
        pairs = schedule_pairs(self.alphas_cumprod, self._prev_timesteps, float(self.final_alpha_cumprod))
        self._tables[("pairs", torch.device("cpu"))] = pairs
        if device is not None:
            self._tables[("pairs", torch.device(device))] = pairs.to(device)

    # ----------------------------------------------------------------- tables
    def _x0_transform(self) -> X0Transform:
        config = self.config
        if config.thresholding:
            return X0Transform(
                threshold_ratio=float(config.dynamic_thresholding_ratio),
                threshold_max=float(config.sample_max_value),
            )
        if config.clip_sample:
            return X0Transform(clip_range=float(config.clip_sample_range))
        return X0Transform()

    def _table_key(self, eta: float, use_clipped: bool, transform: X0Transform) -> tuple[Any, ...]:
        return (self.config.prediction_type, transform.active, use_clipped and transform.active, eta)

    def _host_table(self, key: tuple[Any, ...]) -> tuple[torch.Tensor, list[HostRow], UpdateTerms]:
        """(float64 table, the same as nested lists, structural terms) for a table key; built once."""
        cached = self._tables.get(key)
        if cached is None:
            prediction_type, transforms_x0, use_clipped, eta = key
            check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
            pairs = self._tables[("pairs", torch.device("cpu"))]
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

    # ----------------------------------------------------------------- step
    def scale_model_input(self, sample: torch.Tensor, timestep: Timestep | None = None) -> torch.Tensor:
        """Return ``sample`` unchanged (DDIM does not scale model inputs)."""
        return sample

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
    ) -> Any:
        """One reverse step x_t -> x_{t-1} (DDIM paper, eqs. 12 and 16).

        ``timestep`` may be a Python or numpy int, a 0-dim tensor on any device, or a 1-D tensor with
        one timestep per batch row. A tensor timestep on an accelerator is never read on the host
        (no synchronisation): coefficients are gathered on the device, and an out-of-range value
        yields NaN instead of a wrong table entry. ``eta`` > 0 adds ``sigma_t * z`` with z from
        ``variance_noise`` or drawn from ``generator`` (as diffusers draws it).
        """
        if self.num_inference_steps is None:
            raise ValueError("step() called before set_timesteps(); call scheduler.set_timesteps(num_inference_steps)")
        if not isinstance(model_output, torch.Tensor) or not isinstance(sample, torch.Tensor):
            raise TypeError(
                "model_output and sample must be tensors, "
                f"got {type(model_output).__name__} and {type(sample).__name__}"
            )
        if model_output.shape != sample.shape:
            raise ValueError(
                f"model_output shape {tuple(model_output.shape)} must equal sample shape {tuple(sample.shape)}"
            )
        eta = check_eta(eta)
        transform = self._x0_transform()
        noise = None
        if eta > 0:
            if generator is not None and variance_noise is not None:
                raise ValueError(
                    "pass either generator or variance_noise, not both (variance_noise is the noise itself)"
                )
            if variance_noise is None:
                noise = randn_like_diffusers(
                    model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype
                )
            else:
                if variance_noise.shape != sample.shape:
                    raise ValueError(
                        f"variance_noise shape {tuple(variance_noise.shape)} "
                        f"must equal sample shape {tuple(sample.shape)}"
                    )
                noise = variance_noise
        coefficients, terms = self._coefficients(timestep, sample, eta, use_clipped_model_output, transform)
        prev_sample, pred_original = ddim_update(sample, model_output, coefficients, terms, transform, noise)
        if not return_dict:
            return (prev_sample, pred_original)
        return self.output_class(prev_sample=prev_sample, pred_original_sample=pred_original)

    def _coefficients(
        self, timestep: Timestep, sample: torch.Tensor, eta: float, use_clipped: bool, transform: X0Transform
    ) -> tuple[Coefficients, UpdateTerms]:
        """The coefficient row(s) for ``timestep``: six Python floats for a host timestep, else a
        :class:`ddim.update.CoefficientGather` of device rows (a (b, 6) tensor while compiling)."""
        total = self._prev_timesteps.shape[0]
        key = self._table_key(eta, use_clipped, transform)
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
                raise TypeError(f"timestep must be an integer tensor, got dtype {timestep.dtype}")
            if timestep.ndim > 1:
                raise ValueError(
                    f"timestep must be 0-dim or 1-D (one per batch row), got shape {tuple(timestep.shape)}"
                )
            if timestep.ndim == 1 and timestep.shape[0] != sample.shape[0]:
                raise ValueError(
                    f"timestep has {timestep.shape[0]} entries; a 1-D timestep needs one per batch row "
                    f"(batch size {sample.shape[0]})"
                )
            if timestep.device.type == "cpu" and not torch.compiler.is_compiling():
                self._check_timestep_values(timestep, total)
            # index_select, not table[index]: indexing with a 0-dim tensor reads its value on the host.
            dtype = compute_dtype(sample.dtype)
            prediction_type, transforms_x0, use_clipped_x0, _ = key
            terms = update_terms(prediction_type, transforms_x0, use_clipped_x0)
            if torch.compiler.is_compiling():
                # Traced: gather (abar_t, abar_prev) and derive the coefficients in the graph, where
                # the compiler fuses them into the update; no table is built while tracing.
                pairs = self._tables.get(("pairs", sample.device))
                if pairs is None:
                    pairs = self._tables[("pairs", torch.device("cpu"))].to(sample.device)
                gathered = CoefficientGather(pairs, timestep.to(sample.device)).rows()
                rows = step_coefficients(
                    gathered[..., 0], gathered[..., 1], eta, prediction_type, transforms_x0, use_clipped_x0
                ).to(dtype)
                return rows, terms
            # Gathered where used (in the fused kernel on CUDA): no value is read on the host.
            return CoefficientGather(self._device_table(key, sample.device, dtype), timestep.to(sample.device)), terms
        if isinstance(timestep, bool) or not isinstance(timestep, (int, np.integer)):
            raise TypeError(
                f"timestep must be an int, a numpy integer or an integer tensor, got {timestep!r} "
                f"({type(timestep).__name__})"
            )
        t = int(timestep)
        if not 0 <= t < total:
            raise ValueError(
                f"timestep={t} is out of range; allowed values are 0..{total - 1} (num_train_timesteps={total})"
            )
        _, rows_list, terms = self._host_table(key)
        return rows_list[t], terms

    @staticmethod
    def _check_timestep_values(timestep: torch.Tensor, total: int) -> None:
        bad = (timestep < 0) | (timestep >= total)
        if bool(bad.any()):
            value = int(timestep[bad][0])
            raise ValueError(
                f"timestep contains {value}, out of range; "
                f"allowed values are 0..{total - 1} (num_train_timesteps={total})"
            )

    # ----------------------------------------------------------------- forward process
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
        if index.is_floating_point():
            raise TypeError(f"timesteps must be integers, got dtype {index.dtype}")
        if index.device.type == "cpu" and not torch.compiler.is_compiling():
            self._check_timestep_values(index, table.shape[0])
        rows = table.index_select(0, index.reshape(-1))
        shape = (rows.shape[0],) + (1,) * (like.ndim - 1)
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
        sqrt_alpha, sqrt_one_minus = self._forward_coefficients(timesteps, original_samples)
        work = compute_dtype(original_samples.dtype)
        noisy = sqrt_alpha * original_samples.to(work) + sqrt_one_minus * noise.to(work)
        return noisy.to(original_samples.dtype)

    def get_velocity(
        self, sample: torch.Tensor, noise: torch.Tensor, timesteps: Timestep | Sequence[int]
    ) -> torch.Tensor:
        """The v-prediction target v = sqrt(abar_t) noise - sqrt(1 - abar_t) x_0 (arXiv 2202.00512, sec. 4)."""
        sqrt_alpha, sqrt_one_minus = self._forward_coefficients(timesteps, sample)
        work = compute_dtype(sample.dtype)
        velocity = sqrt_alpha * noise.to(work) - sqrt_one_minus * sample.to(work)
        return velocity.to(sample.dtype)


class DDIMScheduler(DDIMStepping, ConfigMixin):
    """Denoising Diffusion Implicit Models sampler (Song, Meng & Ermon, arXiv 2010.02502).

    Same constructor, attributes and numbers as diffusers' ``DDIMScheduler`` (0.42.1); see
    ``shared/spec/ddim-scheduler.md`` and the README for the meaning of each argument. One more
    argument, after diffusers' 15: ``prev_timestep_from_grid`` (default False, diffusers' numbers):
    each step lands on the next grid point instead of ``t - T // N``, the last on the final alpha.
    """

    _compatibles = list(COMPATIBLE_SCHEDULER_NAMES)
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
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
        prev_timestep_from_grid: bool = False,
    ) -> None:
        check_type("num_train_timesteps", num_train_timesteps, (int, np.integer), "a positive int")
        if num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps={num_train_timesteps} is out of range; it must be >= 1")
        for name, value in (
            ("beta_start", beta_start),
            ("beta_end", beta_end),
            ("dynamic_thresholding_ratio", dynamic_thresholding_ratio),
            ("clip_sample_range", clip_sample_range),
            ("sample_max_value", sample_max_value),
        ):
            check_type(name, value, numbers.Real, "a real number")
        for name, flag in (
            ("clip_sample", clip_sample),
            ("set_alpha_to_one", set_alpha_to_one),
            ("thresholding", thresholding),
            ("rescale_betas_zero_snr", rescale_betas_zero_snr),
            ("prev_timestep_from_grid", prev_timestep_from_grid),
        ):
            check_type(name, flag, bool, "a bool (True or False)")
        check_type("steps_offset", steps_offset, (int, np.integer), "an int")
        for name, text in (
            ("beta_schedule", beta_schedule),
            ("prediction_type", prediction_type),
            ("timestep_spacing", timestep_spacing),
        ):
            check_type(name, text, str, "a string")
        check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        if not 0 < dynamic_thresholding_ratio <= 1:
            raise ValueError(f"dynamic_thresholding_ratio={dynamic_thresholding_ratio} is out of range; allowed (0, 1]")

        if trained_betas is not None:
            betas = betas_from_array(trained_betas, int(num_train_timesteps))
        else:
            betas = make_betas(beta_schedule, int(num_train_timesteps), float(beta_start), float(beta_end))
        if rescale_betas_zero_snr:
            betas = rescale_zero_terminal_snr(betas)
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = alphas_cumprod_from_betas(betas)
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.num_inference_steps = None
        self.timesteps = torch.arange(int(num_train_timesteps) - 1, -1, -1, dtype=torch.int64)
        self._prev_timesteps = torch.arange(int(num_train_timesteps), dtype=torch.int64)
        self._tables = {}

    def __len__(self) -> int:
        return int(self.config.num_train_timesteps)

    @property
    def compatibles(self) -> list[type]:
        """Scheduler classes whose configs this one accepts: ours, and diffusers' when diffusers is loaded."""
        found: list[type] = [type(self)]
        library = sys.modules.get("diffusers")
        if library is not None:
            for name in self._compatibles:
                cls = getattr(library, name, None)
                if isinstance(cls, type) and cls not in found:
                    found.append(cls)
        return found
