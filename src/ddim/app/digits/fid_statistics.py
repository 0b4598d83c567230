"""digits-FID from merged sufficient statistics: the features of a shard job, and FID overall and per digit.

:class:`DigitsFeatures` gives the digits-FID features (:mod:`ddim.app.digits.fid`) of samples computed in
fixed micro-batches of ``FEATURE_MICRO_BATCH`` rows (the last one padded with background), so a sample's
features have the same bits whether computed in its shard or among all merged samples. The FID of
statistics ``(n, S, Q)`` is the Frechet distance of ``mu = S / n``, ``C = (Q - S S^T / n) / (n - 1)`` to
the training digits' (per digit: to the training digits of that digit).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ddim.app.digits.classifier import FEATURE_DIM, DigitsClassifier, load_classifier
from ddim.app.digits.data import DigitsSplit, load_digits_split
from ddim.app.digits.fid import FeatureStatistics, feature_statistics, frechet_distance
from ddim.app.shards.merged_statistics import merge_statistics
from ddim.app.shards.statistics import SufficientStatistics
from ddim.validation import ArgumentValueError

#: Rows per classifier call when computing features (part of a run's ``config.fid_stats``).
FEATURE_MICRO_BATCH = 64
FEATURES_NAME = "digits-classifier penultimate layer"


class DigitsFeatures:
    """Features (N, 32) float32 of digits (N, 1, 8, 8) in [-1, 1] (clipped), in fixed micro-batches."""

    def __init__(self, classifier: DigitsClassifier | None = None) -> None:
        self.classifier = classifier if classifier is not None else load_classifier()
        digest = hashlib.sha256()
        for name, tensor in sorted(self.classifier.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        self.classifier_sha256 = digest.hexdigest()

    def describe(self) -> dict[str, Any]:
        """What a manifest records as ``config.fid_stats``."""
        return {
            "features": FEATURES_NAME,
            "classifier_sha256": self.classifier_sha256,
            "micro_batch": FEATURE_MICRO_BATCH,
            "feature_dim": FEATURE_DIM,
        }

    @torch.no_grad()
    def __call__(self, samples: np.ndarray | torch.Tensor) -> np.ndarray:
        x = torch.as_tensor(np.asarray(samples)).float().clamp(-1, 1)
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 8, 8):
            raise ArgumentValueError(f"samples must have shape (N, 1, 8, 8), got {tuple(x.shape)}")
        parts = []
        for start in range(0, x.shape[0], FEATURE_MICRO_BATCH):
            chunk = x[start : start + FEATURE_MICRO_BATCH]
            rows = chunk.shape[0]
            if rows < FEATURE_MICRO_BATCH:
                chunk = torch.cat([chunk, chunk.new_full((FEATURE_MICRO_BATCH - rows, 1, 8, 8), -1.0)])
            parts.append(self.classifier.features(chunk)[:rows])
        if not parts:
            return np.zeros((0, FEATURE_DIM), dtype=np.float32)
        return torch.cat(parts).numpy()


class DigitsReference:
    """The training digits' feature statistics, overall and per digit, for FID from merged statistics."""

    def __init__(self, features: DigitsFeatures | None = None, data: DigitsSplit | None = None) -> None:
        features = features if features is not None else DigitsFeatures()
        data = data if data is not None else load_digits_split()
        values = features(data.train_images)
        labels = data.train_labels.numpy()
        self.overall = feature_statistics(values)
        self.per_digit = {int(d): feature_statistics(values[labels == d]) for d in np.unique(labels)}

    def fid(self, statistics: SufficientStatistics, digit: int | None = None) -> float:
        """FID of ``statistics`` against all training digits, or against those of ``digit``."""
        reference = self.overall if digit is None else self.per_digit.get(digit)
        if reference is None:
            raise ArgumentValueError(f"digit={digit!r} has no training digits; allowed {sorted(self.per_digit)}")
        generated = FeatureStatistics(statistics.mean, statistics.covariance, statistics.count)
        return frechet_distance(generated, reference)


@dataclass(frozen=True)
class ShardFID:
    """digits-FID of a shard directory from its statistics: overall, and per digit (digits with >= 2 samples)."""

    num_samples: int
    num_shards: int
    fid: float
    per_digit: dict[int, tuple[int, float]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "num_samples": self.num_samples,
            "num_shards": self.num_shards,
            "fid": self.fid,
            "per_digit": {str(d): {"count": n, "fid": f} for d, (n, f) in sorted(self.per_digit.items())},
        }


def fid_from_shards(out_dir: str | os.PathLike[str], reference: DigitsReference | None = None) -> ShardFID:
    """digits-FID of every sample of a shard directory written with feature statistics, without loading a sample
    (:func:`ddim.app.shards.merged_statistics.merge_statistics`); per digit against that digit's training digits."""
    merged = merge_statistics(out_dir)
    reference = reference if reference is not None else DigitsReference()
    per_digit = {
        digit: (part.count, reference.fid(part, digit))
        for digit, part in sorted(merged.per_label.items())
        if part.count >= 2 and digit in reference.per_digit
    }
    return ShardFID(merged.overall.count, merged.num_shards, reference.fid(merged.overall), per_digit)
