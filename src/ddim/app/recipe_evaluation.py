"""The zero-terminal-SNR recipe (arXiv 2305.08891) measured on the conditional digits models.

Every cell samples ``per_digit`` images of each digit 0..9 per seed with classifier-free guidance
(``ddim.app.digits.sample_digits``) and measures them (``ddim.app.digits.sample_metrics``): class accuracy,
per-class digits-FID, digits-FID against all training digits, the over-exposed pixel fraction, per-image pixel
standard deviation and mean brightness. The parts of the evaluation:

- guidance sweep: scale s in ``SWEEP_SCALES`` x rescale phi in {0, 0.7} on the zero-SNR model (trailing, S = 50);
- recipe ablation: {control (plain schedule), zero-SNR} x {leading, trailing} x S in {10, 25, 50} at the
  default s and phi, with each grid's first timestep and its SNR = abar / (1 - abar);
- brightness: the distribution of per-image mean brightness of samples against the data's, for each model;
- DDIM against DDPM: S = 50, eta 0 against 1000 ancestral steps (eta 1 at S = 1000, the same sampler).

Comparisons are made at equal sample counts, as FID is biased by the count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from ddim.app.digits.conditional import DEFAULT_GUIDANCE_RESCALE, DEFAULT_GUIDANCE_SCALE, NUM_DIGITS, sample_digits
from ddim.app.digits.sample_metrics import DigitsJudge, mean_brightness, overexposed_fraction, pixel_std
from ddim.app.evaluation_framework import run_seeds, seed_spread
from ddim.scheduler import DDIMScheduler
from ddim.validation import check_int

SWEEP_SCALES: tuple[float, ...] = (0.0, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0)
SWEEP_RESCALES: tuple[float, ...] = (0.0, DEFAULT_GUIDANCE_RESCALE)
ABLATION_STEPS: tuple[int, ...] = (10, 25, 50)
SPACINGS: tuple[str, ...] = ("leading", "trailing")
DDPM_STEPS = 1000
#: Bins of the brightness histograms: per-image mean pixel over [-1, 1].
BRIGHTNESS_BINS = 40
#: Per-image brightness quantiles reported.
QUANTILES: tuple[float, ...] = (0.01, 0.05, 0.5, 0.95, 0.99)
#: Samples per model call.
BATCH_SIZE = 500


@dataclass(frozen=True)
class RecipeCell:
    """One sampling setting of a named model: guidance, grid spacing, steps, eta, and digits per seed."""

    model: str
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    guidance_rescale: float = DEFAULT_GUIDANCE_RESCALE
    spacing: str = "trailing"
    steps: int = 50
    eta: float = 0.0
    per_digit: int = 100

    @property
    def count(self) -> int:
        """Samples per seed."""
        return self.per_digit * NUM_DIGITS


METRICS: tuple[str, ...] = ("accuracy", "per_class_fid", "fid", "overexposed", "pixel_std", "brightness_mean")


@dataclass
class RecipeResult:
    """Each metric's value per seed for one cell, its wall time per seed, and the first timestep of its grid."""

    cell: RecipeCell
    values: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name in METRICS})
    seconds: list[float] = field(default_factory=list)
    first_timestep: int = 0
    first_snr: float = 0.0
    brightness: list[float] = field(default_factory=list)

    def mean(self, metric: str) -> float:
        return float(np.mean(self.values[metric]))

    def spread(self, metric: str) -> float:
        return seed_spread(self.values[metric])

    def as_dict(self) -> dict[str, Any]:
        summary = {f"{k}_mean": self.mean(k) for k in self.values} | {f"{k}_std": self.spread(k) for k in self.values}
        return {
            **asdict(self.cell),
            "count": self.cell.count,
            "first_timestep": self.first_timestep,
            "first_snr": self.first_snr,
            **summary,
            "per_seed": self.values,
            "seconds": self.seconds,
            "brightness": brightness_summary(torch.tensor(self.brightness)) if self.brightness else None,
        }


def cell_scheduler(scheduler: DDIMScheduler, cell: RecipeCell) -> DDIMScheduler:
    """``scheduler`` with the cell's timestep spacing."""
    if scheduler.config.timestep_spacing == cell.spacing:
        return scheduler
    return DDIMScheduler.from_config(scheduler.config, timestep_spacing=cell.spacing)


def first_timestep_and_snr(scheduler: DDIMScheduler, steps: int) -> tuple[int, float]:
    """The first timestep of an S-step grid and its SNR abar_t / (1 - abar_t) (0 where abar_t = 0)."""
    probe = DDIMScheduler.from_config(scheduler.config)
    probe.set_timesteps(steps)
    first = int(probe.timesteps[0])
    abar = float(probe.alphas_cumprod[first].double())
    return first, abar / (1.0 - abar) if abar < 1.0 else math.inf


def balanced_digits(per_digit: int) -> torch.Tensor:
    """0, 0, ..., 1, 1, ..., 9: ``per_digit`` of each digit."""
    check_int("per_digit", per_digit, minimum=1)
    return torch.arange(NUM_DIGITS).repeat_interleave(per_digit)


def sample_cell(
    model: Any, scheduler: DDIMScheduler, cell: RecipeCell, seed: int, batch_size: int = BATCH_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """The cell's samples for one seed and their digits: one generator, ``batch_size`` samples per call."""
    digits = balanced_digits(cell.per_digit)
    generator = torch.Generator().manual_seed(seed)
    sampler = cell_scheduler(scheduler, cell)
    batches = [
        sample_digits(
            model,
            sampler,
            digits[first : first + batch_size],
            steps=cell.steps,
            guidance_scale=cell.guidance_scale,
            guidance_rescale=cell.guidance_rescale,
            eta=cell.eta,
            generator=generator,
        )
        for first in range(0, digits.shape[0], batch_size)
    ]
    return torch.cat(batches), digits


def measure(judge: DigitsJudge, samples: torch.Tensor, digits: torch.Tensor) -> dict[str, float]:
    """Every metric of :data:`METRICS` for one seed's samples."""
    return {
        "accuracy": judge.accuracy(samples, digits),
        "per_class_fid": judge.per_class_fid(samples, digits),
        "fid": judge.fid(samples),
        "overexposed": overexposed_fraction(samples),
        "pixel_std": float(pixel_std(samples).mean()),
        "brightness_mean": float(mean_brightness(samples).mean()),
    }


def run_recipe_cell(
    models: dict[str, tuple[Any, DDIMScheduler]],
    cell: RecipeCell,
    seeds: Sequence[int],
    judge: DigitsJudge,
    on_seed: Callable[[], None] | None = None,
    keep_brightness: bool = False,
    batch_size: int = BATCH_SIZE,
) -> RecipeResult:
    """Sample and measure ``cell`` for every seed; ``keep_brightness`` keeps every image's mean brightness."""
    model, scheduler = models[cell.model]
    first, snr = first_timestep_and_snr(cell_scheduler(scheduler, cell), cell.steps)
    result = RecipeResult(cell, first_timestep=first, first_snr=snr)

    def score(drawn: tuple[torch.Tensor, torch.Tensor]) -> tuple[dict[str, float], list[float]]:
        samples, digits = drawn
        return measure(judge, samples, digits), mean_brightness(samples).tolist() if keep_brightness else []

    scores, result.seconds = run_seeds(
        seeds, lambda seed: sample_cell(model, scheduler, cell, seed, batch_size), score, on_seed
    )
    for values, brightness in scores:
        for name, value in values.items():
            result.values[name].append(value)
        result.brightness.extend(brightness)
    return result


def brightness_summary(values: torch.Tensor) -> dict[str, Any]:
    """Mean, standard deviation, quantiles and a histogram (``BRIGHTNESS_BINS`` bins over [-1, 1]) of brightness."""
    data = values.double()
    counts = torch.histc(data.clamp(-1, 1), bins=BRIGHTNESS_BINS, min=-1.0, max=1.0)
    return {
        "count": int(data.numel()),
        "mean": float(data.mean()),
        "std": float(data.std()) if data.numel() > 1 else 0.0,
        "quantiles": {f"{q:g}": float(torch.quantile(data, q)) for q in QUANTILES},
        "histogram": [int(c) for c in counts.tolist()],
    }


def extreme_fraction(values: Sequence[float], reference: dict[str, Any]) -> float:
    """The fraction of ``values`` outside the reference's 5% and 95% brightness quantiles (10% for the data)."""
    low, high = reference["quantiles"]["0.05"], reference["quantiles"]["0.95"]
    array = np.asarray(values)
    return float(np.mean((array < low) | (array > high)))


def wasserstein(values: Sequence[float], reference: torch.Tensor) -> float:
    """The 1-Wasserstein distance between two brightness samples (the area between their CDFs)."""
    from scipy.stats import wasserstein_distance

    return float(wasserstein_distance(np.asarray(values), reference.double().numpy()))


def resampled_wasserstein(values: torch.Tensor, draws: int, seed: int) -> float:
    """W1 from ``draws`` of ``values`` drawn with replacement to ``values`` itself: W1's floor at that count."""
    index = torch.randint(0, values.shape[0], (draws,), generator=torch.Generator().manual_seed(seed))
    return wasserstein(values[index].tolist(), values)


def sweep_cells(per_digit: int, scales: Sequence[float] = SWEEP_SCALES) -> list[RecipeCell]:
    """The guidance sweep on the zero-SNR model: every (s, phi), trailing, S = 50, eta 0."""
    return [RecipeCell("zero_snr", s, r, per_digit=per_digit) for r in SWEEP_RESCALES for s in scales]


def ablation_cells(per_digit: int, steps: Sequence[int] = ABLATION_STEPS) -> list[RecipeCell]:
    """{control, zero-SNR} x {leading, trailing} x S at the default guidance."""
    return [
        RecipeCell(model, spacing=spacing, steps=s, per_digit=per_digit)
        for model in ("control", "zero_snr")
        for spacing in SPACINGS
        for s in steps
    ]


def ddpm_cells(per_digit: int) -> list[RecipeCell]:
    """DDIM (S = 50, eta 0) and DDPM (S = 1000, eta 1) on the zero-SNR model, conditional alone (s = 1)."""
    base = RecipeCell("zero_snr", guidance_scale=1.0, guidance_rescale=0.0, per_digit=per_digit)
    return [base, replace(base, steps=DDPM_STEPS, eta=1.0)]
