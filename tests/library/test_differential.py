"""Differential suite: ``ddim.DDIMScheduler`` against diffusers 0.42.1 over the whole config space.

Configurations are drawn from a seeded generator (``NUM_CONFIGS`` of them, so a failure is reproducible
from its index) over every constructor argument; each is run for eta in {0, 0.5, 1} x float32/float64 x
``use_clipped_model_output`` (``VARIANTS`` per config), as single steps at grid and off-grid timesteps and
as a full sampling loop, with noise from a seeded generator, a per-row list of generators or
``variance_noise``.

References and tolerances (``tolerance_failures``):

- ``widened``: a diffusers scheduler whose ``alphas_cumprod``/``final_alpha_cumprod`` are widened to
  float64, so it computes its coefficients in float64 from the same float32-rounded alphas as ours and
  applies them in the sample's dtype. float64 must agree to ``FP64_TOL`` (observed ~1e-15), float32 to
  ``FP32_TOL`` (observed ~1e-6).
- ``stock``: diffusers as shipped, coefficients computed in float32. float32 must agree to ``FP32_TOL``
  beyond the float32 conditioning of its radicand (see :class:`Scales`); without that allowance
  (``stock-raw``) and in float64 against stock the deviation is only recorded.
- where diffusers yields NaN and ours a finite value, the cause must be diffusers' negative radicand at
  eta <= 1 (a documented deviation); the case is counted in ``diffusers_nan``. Any other NaN mismatch,
  or a non-finite value of ours, fails.

"Relative" is relative to the magnitude of the terms the result is combined from, not to the result: the
update sums terms like x/sqrt(a) and sqrt(1-a)/sqrt(a) m that nearly cancel at high noise, and a rounding
error is proportional to the terms, so dividing by the (possibly tiny) result would measure cancellation, not
disagreement. :func:`term_scales` bounds those terms from float64 alphas and the inputs' max-norms, with
formulas written here independently of the package.

``benchmarks/parity_report.py`` runs the same cases and prints the number of cases and the largest deviation
of each kind.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import diffusers
import numpy as np
import pytest
import torch

from ddim import DDIMScheduler

NUM_CONFIGS = 200
SEED = 20_101_502
FP64_TOL = 1e-6
FP32_TOL = 1e-5
ETAS = (0.0, 0.5, 1.0)
DTYPES = (torch.float32, torch.float64)
VARIANTS = [(eta, dtype, clipped) for eta in ETAS for dtype in DTYPES for clipped in (False, True)]
SHAPE = (3, 2, 4, 4)
NOISE_MODES = ("generator", "generator_list", "variance_noise")


# ----------------------------------------------------------------------------- configurations
def draw_config(rng: np.random.Generator) -> tuple[dict[str, Any], int]:
    """One scheduler config and a valid num_inference_steps N for it."""
    total = int(rng.choice([1, 7, 10, 50, 100, 250, 999, 1000, int(rng.integers(2, 1201))]))
    config: dict[str, Any] = {"num_train_timesteps": total}
    schedule = str(rng.choice(["linear", "scaled_linear", "squaredcos_cap_v2", "trained"]))
    if schedule == "trained":
        betas = np.sort(rng.uniform(1e-5, 0.06, size=total))
        config["trained_betas"] = betas.tolist() if rng.random() < 0.5 else betas
    else:
        config["beta_schedule"] = schedule
        start = float(10 ** rng.uniform(-5, -2.5))
        config["beta_start"] = start
        config["beta_end"] = float(start + 10 ** rng.uniform(-3, math.log10(0.05)))
    config["prediction_type"] = str(rng.choice(["epsilon", "sample", "v_prediction"]))
    # Zero terminal SNR makes abar_{T-1} = 0, where an epsilon prediction cannot give x0 (diffusers and
    # ours both divide by 0); the recipe pairs it with v-prediction.
    # (with T = 1 the rescale is 0/0 in diffusers and ours alike)
    if config["prediction_type"] != "epsilon" and total > 1 and rng.random() < 0.3:
        config["rescale_betas_zero_snr"] = True
    config["clip_sample"] = bool(rng.random() < 0.5)
    if rng.random() < 0.5:
        config["clip_sample_range"] = float(rng.uniform(0.3, 3.0))
    if rng.random() < 0.25:
        config["thresholding"] = True
        config["dynamic_thresholding_ratio"] = float(rng.uniform(0.8, 1.0))
        config["sample_max_value"] = float(rng.uniform(1.0, 3.0))
    config["set_alpha_to_one"] = bool(rng.random() < 0.5)
    spacing = str(rng.choice(["leading", "trailing", "linspace"]))
    config["timestep_spacing"] = spacing
    offset = int(rng.choice([0, 0, 1, int(rng.integers(0, 4))]))
    config["steps_offset"] = offset
    choices = [1, min(2, total), int(rng.integers(1, min(total, 40) + 1))]
    if total <= 40:
        choices.append(total)
    n = int(rng.choice(choices))
    if offset >= total:  # refused by our constructor (0..T - 1; diffusers takes any int)
        config["steps_offset"] = offset = 0
    if spacing == "leading":
        # keep the grid in range: diffusers would index past the table (tested in test_errors.py)
        while n > 1 and (n - 1) * (total // n) + offset >= total:
            n -= 1
    return config, n


def all_configs() -> list[tuple[dict[str, Any], int]]:
    rng = np.random.default_rng(SEED)
    return [draw_config(rng) for _ in range(NUM_CONFIGS)]


CONFIGS = all_configs()


def reference(config: dict[str, Any], widen: bool) -> diffusers.DDIMScheduler:
    """diffusers' scheduler for ``config``; with ``widen`` its alpha tables are float64."""
    ref = diffusers.DDIMScheduler(**config)
    if widen:
        ref.alphas_cumprod = ref.alphas_cumprod.double()
        ref.final_alpha_cumprod = ref.final_alpha_cumprod.double()
    return ref


# ----------------------------------------------------------------------------- metric
U32 = 2.0**-24  # unit roundoff of float32


@dataclass(frozen=True)
class Scales:
    """Magnitudes of the terms a step sums, and the float32 conditioning of its square root.

    ``x0`` and ``prev`` bound the terms of the predicted x0 and of x_prev. ``direction`` bounds the
    change of the term sqrt(1 - a' - sigma^2) * eps when the radicand carries float32 rounding
    (|d| <= 8 u (1 + a' + sigma^2)): at eta = 1 and high noise the radicand cancels to ~a, and
    diffusers' float32 radicand then moves x_prev by up to sqrt(|d|) * |eps|, far above 1e-5 of the
    terms, even though ours (float64) is exact there.
    """

    x0: float
    prev: float
    direction: float


def term_scales(
    alphas: torch.Tensor,
    final_alpha: float,
    config: dict[str, Any],
    n: int,
    t: int,
    x: torch.Tensor,
    m: torch.Tensor,
    z: torch.Tensor | None,
    eta: float,
    clipped: bool,
) -> Scales:
    """Bounds of the magnitudes of the terms x0 and x_prev are summed from (see :class:`Scales`)."""
    total = config["num_train_timesteps"]
    prev = t - total // n
    a = float(alphas[t])
    ap = float(alphas[prev]) if prev >= 0 else final_alpha
    sa, sb, sap, sbp = math.sqrt(a), math.sqrt(1 - a), math.sqrt(ap), math.sqrt(1 - ap)
    big_x, big_m = float(x.abs().max()), float(m.abs().max())
    big_z = float(z.abs().max()) if z is not None else 0.0
    kind = config["prediction_type"]
    if kind == "epsilon":
        x0_scale, eps_scale = big_x / sa + sb / sa * big_m, big_m
    elif kind == "sample":
        x0_scale, eps_scale = big_m, big_x / sb + sa / sb * big_m
    else:
        x0_scale, eps_scale = sa * big_x + sb * big_m, sb * big_x + sa * big_m
    if clipped and (config.get("clip_sample", True) or config.get("thresholding", False)):
        eps_scale = max(eps_scale, (big_x + sa * x0_scale) / sb)
    variance = (1 - ap) / (1 - a) * (1 - a / ap) if a < 1 else 0.0
    radicand = max(1 - ap - eta * eta * variance, 0.0)
    rounding = 8 * U32 * (1 + ap + eta * eta * variance)
    direction = eps_scale * (math.sqrt(radicand + rounding) - math.sqrt(radicand))
    return Scales(x0_scale, sap * x0_scale + sbp * (eps_scale + eta * big_z), direction)


def relative_error(ours: torch.Tensor, ref: torch.Tensor, scale: float, allowance: float = 0.0) -> float:
    """max|ours - ref| beyond ``allowance``, divided by ``scale``; inf if ours is not finite or NaNs differ."""
    if ours.dtype != ref.dtype or ours.shape != ref.shape:
        raise AssertionError(f"dtype/shape differ: {ours.dtype}{tuple(ours.shape)} vs {ref.dtype}{tuple(ref.shape)}")
    if not bool(ours.isfinite().all()) or bool((ours.isnan() != ref.isnan()).any()):
        return math.inf
    diff = float((ours.double() - ref.double()).nan_to_num(nan=0.0).abs().max())
    return max(diff - allowance, 0.0) / scale


def diffusers_radicand(ref: diffusers.DDIMScheduler, t: int, eta: float) -> float:
    """1 - a' - sigma^2 as diffusers computes it (in its alphas' dtype)."""
    prev = t - ref.config.num_train_timesteps // ref.num_inference_steps
    ap = ref.alphas_cumprod[prev] if prev >= 0 else ref.final_alpha_cumprod
    std = eta * ref._get_variance(t, prev) ** 0.5
    return float(1 - ap - std**2)


@dataclass
class Deviation:
    """Largest relative deviations seen, by kind, and the number of comparisons made."""

    worst: dict[str, float] = field(default_factory=dict)
    comparisons: int = 0
    cases: int = 0
    diffusers_nan: int = 0

    def record(self, kind: str, value: float) -> None:
        self.comparisons += 1
        self.worst[kind] = max(self.worst.get(kind, 0.0), value)


# ----------------------------------------------------------------------------- model
def gaussian_model(alphas: torch.Tensor, kind: str, mu: float = 0.4, s: float = 0.7) -> Callable[..., torch.Tensor]:
    """Exact predictor for data x0 ~ N(mu, s^2): eps, x0 or v given x_t (a smooth, bounded model)."""

    def model(x: torch.Tensor, t: int) -> torch.Tensor:
        a = float(alphas[t])
        k = a * s * s + 1 - a
        eps = (x - math.sqrt(a) * mu) * (math.sqrt(1 - a) / k)
        x0 = (x - math.sqrt(a) * mu) * (math.sqrt(a) * s * s / k) + mu
        if kind == "epsilon":
            return eps
        if kind == "sample":
            return x0
        return eps * math.sqrt(a) - x0 * math.sqrt(1 - a)

    return model


def noise_kwargs(mode: str, seed: int, sample: torch.Tensor, eta: float) -> dict[str, Any]:
    """The step's noise source: a seeded generator, one generator per row, or variance_noise itself."""
    if eta == 0 or mode == "generator":
        return {"generator": torch.Generator().manual_seed(seed)}
    if mode == "generator_list":
        return {"generator": [torch.Generator().manual_seed(seed + row) for row in range(sample.shape[0])]}
    noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(seed), dtype=sample.dtype)
    return {"variance_noise": noise}


def drawn_noise(kwargs: dict[str, Any], like: torch.Tensor) -> torch.Tensor:
    """The noise a step with ``kwargs`` adds (re-drawn from fresh copies of the same seeds)."""
    if "variance_noise" in kwargs:
        return kwargs["variance_noise"]
    generator = kwargs["generator"]
    if isinstance(generator, list):
        rows = [torch.randn((1, *like.shape[1:]), generator=g, dtype=like.dtype) for g in generator]
        return torch.cat(rows)
    return torch.randn(like.shape, generator=generator, dtype=like.dtype)


# ----------------------------------------------------------------------------- runs
def record_step(
    deviation: Deviation,
    tag: str,
    name: str,
    ref: diffusers.DDIMScheduler,
    ours_out: Any,
    ref_out: Any,
    scales: Scales,
    t: int,
    eta: float,
    what: str = "",
) -> bool:
    """Record one comparison; False when diffusers gave NaN where ours is finite (its documented cause)."""
    prev, expected = ours_out.prev_sample, ref_out.prev_sample
    if bool((expected.isnan() & ~prev.isnan()).any()):
        # Deviation: at eta = 1 with abar_t ~ 0 (zero terminal SNR) diffusers' radicand 1 - a' - sigma^2
        # rounds below 0 and its sqrt gives NaN; ours clamps the rounding-level negative to 0.
        if not (eta <= 1 and diffusers_radicand(ref, t, eta) < 0):
            deviation.record(f"{tag}/{name}/{what}prev_sample", math.inf)
        deviation.diffusers_nan += 1
        return False
    allowance = scales.direction if name == "stock" and tag == "fp32" else 0.0
    deviation.record(f"{tag}/{name}/{what}prev_sample", relative_error(prev, expected, scales.prev, allowance))
    if name == "stock" and tag == "fp32":
        deviation.record(f"{tag}/stock-raw/{what}prev_sample", relative_error(prev, expected, scales.prev))
    if not what:
        x0 = relative_error(ours_out.pred_original_sample, ref_out.pred_original_sample, scales.x0)
        deviation.record(f"{tag}/{name}/pred_original_sample", x0)
    return True


def run_config(index: int) -> Deviation:
    """All variants of config ``index``: single steps and a full loop each."""
    config, n = CONFIGS[index]
    deviation = Deviation()
    rng = np.random.default_rng(index)
    ours = DDIMScheduler(**config)
    ours.set_timesteps(n)
    total = config["num_train_timesteps"]
    grid = ours.timesteps.tolist()
    alphas, final = ours.alphas_cumprod.double(), float(ours.final_alpha_cumprod)
    refs = {"widened": reference(config, widen=True), "stock": reference(config, widen=False)}
    for ref in refs.values():
        ref.set_timesteps(n)
        # Deviation: diffusers' trailing grid can hold N + 1 timesteps ending in -1; ours has exactly N.
        assert grid == ref.timesteps.tolist()[:n]
        assert set(ref.timesteps.tolist()[n:]) <= {-1}
    picks = sorted({grid[0], grid[-1], grid[len(grid) // 2], *rng.integers(0, total, size=3).tolist()})
    model = gaussian_model(alphas, config["prediction_type"])
    for variant, (eta, dtype, clipped) in enumerate(VARIANTS):
        mode = NOISE_MODES[(index + variant) % len(NOISE_MODES)]
        seed = 1000 * index + variant
        tag = "fp32" if dtype == torch.float32 else "fp64"
        draw = torch.Generator().manual_seed(seed)
        deviation.cases += 1
        for t in picks:  # single steps, from the same inputs and noise
            x = torch.randn(SHAPE, generator=draw, dtype=dtype) * float(rng.uniform(0.5, 3))
            m = torch.randn(SHAPE, generator=draw, dtype=dtype)
            out = ours.step(m, t, x, eta, clipped, **noise_kwargs(mode, seed + t, x, eta))
            z = drawn_noise(noise_kwargs(mode, seed + t, x, eta), x) if eta > 0 else None
            scales = term_scales(alphas, final, config, n, t, x, m, z, eta, clipped)
            for name, ref in refs.items():
                expected = ref.step(m, t, x, eta, clipped, **noise_kwargs(mode, seed + t, x, eta))
                record_step(deviation, tag, name, ref, out, expected, scales, t, eta)
        # full loop: each scheduler follows its own trajectory from the same x_T and noise seeds
        # (an earlier step's deviation is carried along, so the loop's scale is the largest step scale so
        # far and its float32 allowance the sum of the steps' allowances)
        x = torch.randn(SHAPE, generator=draw, dtype=dtype)
        trajectories = dict.fromkeys(refs, x)
        carried = Scales(0.0, 0.0, 0.0)
        for step, t in enumerate(grid):
            m = model(x, t)
            # as pipelines do, every other variant passes the 0-dim tensor of ``timesteps``
            timestep: int | torch.Tensor = ours.timesteps[step] if (index + variant) % 2 else t
            out = ours.step(m, timestep, x, eta, clipped, **noise_kwargs(mode, seed + 7919 * step, x, eta))
            z = drawn_noise(noise_kwargs(mode, seed + 7919 * step, x, eta), x) if eta > 0 else None
            scales = term_scales(alphas, final, config, n, t, x, m, z, eta, clipped)
            carried = Scales(scales.x0, max(carried.prev, scales.prev), carried.direction + scales.direction)
            scales = carried
            for name in list(trajectories):
                y = trajectories[name]
                kwargs = noise_kwargs(mode, seed + 7919 * step, y, eta)
                expected = refs[name].step(model(y, t), timestep, y, eta, clipped, **kwargs)
                if record_step(deviation, tag, name, refs[name], out, expected, scales, t, eta, "loop/"):
                    trajectories[name] = expected.prev_sample
                else:
                    del trajectories[name]
            x = out.prev_sample
    return deviation


def tolerance_failures(deviation: Deviation) -> dict[str, float]:
    """The kinds whose worst deviation exceeds its tolerance (fp64 vs stock and raw values: recorded only)."""
    limits = {"fp64/widened/": FP64_TOL, "fp32/widened/": FP32_TOL, "fp32/stock/": FP32_TOL}
    failures = {}
    for kind, value in deviation.worst.items():
        limit = next((v for k, v in limits.items() if kind.startswith(k)), math.inf)
        if not value <= limit:
            failures[kind] = value
    return failures


@pytest.mark.parametrize("index", range(NUM_CONFIGS))
def test_matches_diffusers(index: int) -> None:
    deviation = run_config(index)
    failures = tolerance_failures(deviation)
    config, n = CONFIGS[index]
    shown = {k: ("<array>" if k == "trained_betas" else v) for k, v in config.items()}
    assert not failures, f"config {shown} N={n}: {failures}"


def test_config_space_is_covered() -> None:
    """The seeded draw reaches every value of every categorical argument."""
    seen: dict[str, set[Any]] = {}
    for config, _ in CONFIGS:
        for key in ("beta_schedule", "prediction_type", "timestep_spacing", "clip_sample", "set_alpha_to_one"):
            seen.setdefault(key, set()).add(config.get(key))
        seen.setdefault("trained_betas", set()).add("trained_betas" in config)
        seen.setdefault("rescale", set()).add(bool(config.get("rescale_betas_zero_snr")))
        seen.setdefault("thresholding", set()).add(bool(config.get("thresholding")))
        seen.setdefault("offset", set()).add(config["steps_offset"] > 0)
    assert {"linear", "scaled_linear", "squaredcos_cap_v2"} <= seen["beta_schedule"]
    assert seen["prediction_type"] == {"epsilon", "sample", "v_prediction"}
    assert seen["timestep_spacing"] == {"leading", "trailing", "linspace"}
    for key in ("clip_sample", "set_alpha_to_one", "trained_betas", "rescale", "thresholding", "offset"):
        assert seen[key] == {False, True}, key


def test_metric_detects_a_wrong_coefficient() -> None:
    """The relative metric is not blind: a 1e-4 relative change of one coefficient exceeds both tolerances."""
    config, n = {"num_train_timesteps": 1000, "clip_sample": False, "prediction_type": "epsilon"}, 50
    ours = DDIMScheduler(**config)
    ours.set_timesteps(n)
    x, m = torch.randn(SHAPE, dtype=torch.float64), torch.randn(SHAPE, dtype=torch.float64)
    t = 981
    out = ours.step(m, t, x).prev_sample
    a = float(ours.alphas_cumprod.double()[t])
    ap = float(ours.alphas_cumprod.double()[t - 20])
    x0 = (x - math.sqrt(1 - a) * m) / math.sqrt(a)
    skewed = math.sqrt(ap) * x0 + math.sqrt(1 - ap) * (1 + 1e-4) * m
    scale = term_scales(ours.alphas_cumprod.double(), 1.0, config, n, t, x, m, None, 0.0, False).prev
    assert relative_error(out, skewed, scale) > FP32_TOL
