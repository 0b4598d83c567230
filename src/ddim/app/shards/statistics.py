"""Feature statistics that merge across shards: count, sum and sum of outer products, in float64.

For features f_1 .. f_n (d each) a shard stores ``n``, ``S = sum f_i`` and ``Q = sum f_i f_i^T``; shards
merge by adding them, and the mean and unbiased covariance follow as ``mu = S / n`` and
``C = (Q - S S^T / n) / (n - 1)``. A conditional run also stores them per label (arrays indexed by label).
Arrays in a shard: ``fid_count`` (1,), ``fid_sum`` (d,), ``fid_outer`` (d, d) and ``fid_class_count`` (L,),
``fid_class_sum`` (L, d), ``fid_class_outer`` (L, d, d) for L labels.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ddim.validation import ArgumentValueError

#: Arrays of every shard of a run with statistics, and the per-label ones of a conditional run.
OVERALL_NAMES = ("fid_count", "fid_sum", "fid_outer")
CLASS_NAMES = ("fid_class_count", "fid_class_sum", "fid_class_outer")
#: Relative tolerance of ``ddim verify``'s recomputation (features may round differently on another CPU).
VERIFY_RTOL = 1e-5


class FeatureExtractor(Protocol):
    """Features (N, d) float32 of samples, whose rows do not depend on the other rows (fixed micro-batches)."""

    def __call__(self, samples: np.ndarray) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class SufficientStatistics:
    """``count``, ``total`` (d,) and ``outer`` (d, d), float64: they add across shards."""

    count: int
    total: np.ndarray
    outer: np.ndarray

    def __add__(self, other: SufficientStatistics) -> SufficientStatistics:
        return SufficientStatistics(self.count + other.count, self.total + other.total, self.outer + other.outer)

    @property
    def mean(self) -> np.ndarray:
        return self.total / self.count

    @property
    def covariance(self) -> np.ndarray:
        """``(Q - S S^T / n) / (n - 1)``, symmetrised; needs ``count >= 2``."""
        if self.count < 2:
            raise ArgumentValueError(f"a covariance needs at least 2 samples, got count={self.count}")
        covariance = (self.outer - np.outer(self.total, self.total) / self.count) / (self.count - 1)
        return (covariance + covariance.T) / 2


def shard_statistics(features: np.ndarray, labels: np.ndarray | None, num_labels: int | None) -> dict[str, np.ndarray]:
    """The statistics arrays of one shard (features (n, d); with labels, per label too)."""
    values = np.asarray(features, dtype=np.float64)
    arrays = {
        "fid_count": np.array([values.shape[0]], dtype=np.int64),
        "fid_sum": values.sum(0),
        "fid_outer": values.T @ values,
    }
    if labels is not None and num_labels is not None:
        d = values.shape[1]
        counts = np.zeros(num_labels, dtype=np.int64)
        sums, outers = np.zeros((num_labels, d)), np.zeros((num_labels, d, d))
        for label in np.unique(labels):
            rows = values[labels == label]
            counts[label], sums[label], outers[label] = rows.shape[0], rows.sum(0), rows.T @ rows
        arrays.update({"fid_class_count": counts, "fid_class_sum": sums, "fid_class_outer": outers})
    return arrays


def statistics_shape_problem(arrays: dict[str, np.ndarray], count: int, dim: int, num_labels: int | None) -> str | None:
    """Why a shard's statistics arrays are not of the expected shapes, types and counts, or None."""
    expected: dict[str, tuple[tuple[int, ...], type]] = {
        "fid_count": ((1,), np.int64),
        "fid_sum": ((dim,), np.float64),
        "fid_outer": ((dim, dim), np.float64),
    }
    if num_labels is not None:
        expected.update(
            {
                "fid_class_count": ((num_labels,), np.int64),
                "fid_class_sum": ((num_labels, dim), np.float64),
                "fid_class_outer": ((num_labels, dim, dim), np.float64),
            }
        )
    for name, (shape, dtype) in expected.items():
        array = arrays.get(name)
        if array is None or array.shape != shape or array.dtype != dtype:
            return f"its statistics {name} are missing or not {np.dtype(dtype).name} of shape {shape}"
        if not np.isfinite(array).all():
            return f"its statistics {name} are not finite"
    if int(arrays["fid_count"][0]) != count:
        return f"its statistics count {int(arrays['fid_count'])} samples, the shard holds {count}"
    if num_labels is not None and (arrays["fid_class_count"].min() < 0 or arrays["fid_class_count"].sum() != count):
        return "its per-label statistics do not count each sample once"
    return None


def statistics_problem(
    arrays: dict[str, np.ndarray], extractor: Callable[[np.ndarray], np.ndarray], num_labels: int | None
) -> str | None:
    """Why a shard's stored statistics are not those of its samples (recomputed), or None."""
    features = extractor(arrays["samples"])
    shape = statistics_shape_problem(arrays, len(arrays["samples"]), features.shape[1], num_labels)
    if shape is not None:
        return shape
    fresh = shard_statistics(features, arrays.get("labels"), num_labels)
    for name, value in fresh.items():
        stored = arrays[name]
        if value.dtype == np.int64:
            if not np.array_equal(stored, value):
                return f"its statistics {name} do not match its samples"
        elif np.abs(stored - value).max() > VERIFY_RTOL * max(1.0, float(np.abs(value).max())):
            return f"its statistics {name} do not match its samples (recomputed from the samples)"
    return None


def overall_statistics(arrays: dict[str, np.ndarray]) -> SufficientStatistics:
    return SufficientStatistics(int(arrays["fid_count"][0]), arrays["fid_sum"], arrays["fid_outer"])


def class_statistics(arrays: dict[str, np.ndarray], label: int) -> SufficientStatistics:
    return SufficientStatistics(
        int(arrays["fid_class_count"][label]), arrays["fid_class_sum"][label], arrays["fid_class_outer"][label]
    )


def feature_extractor(described: object) -> FeatureExtractor:
    """The extractor a manifest's ``config.fid_stats`` names (``ArgumentValueError`` for an unknown one)."""
    extractor = _digits_features()
    if described != extractor.describe():
        raise ArgumentValueError(
            f"config.fid_stats={described!r} does not describe this version's digits-FID features "
            f"{extractor.describe()!r}"
        )
    return extractor


@functools.cache
def _digits_features() -> FeatureExtractor:
    from ddim.app.digits.fid_statistics import DigitsFeatures

    return DigitsFeatures()


def content_problem(arrays: dict[str, np.ndarray], config: dict[str, Any]) -> str | None:
    """Why a shard's labels or statistics are not those of its run (label rule; recomputed features), or None."""
    from ddim.app.shards.conditioning import conditioning_from_config, labels_problem

    problem = labels_problem(arrays, config)
    if problem is not None or "fid_stats" not in config:
        return problem
    conditioning = conditioning_from_config(config)
    extractor = feature_extractor(config["fid_stats"])
    return statistics_problem(arrays, extractor, conditioning.num_labels if conditioning is not None else None)
