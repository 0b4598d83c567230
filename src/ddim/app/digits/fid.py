"""digits-FID: the Frechet distance between generated and real digits in a small classifier's features.

FID (Heusel et al. 2017): with feature means mu_1, mu_2 and covariances S_1, S_2,
d^2 = ||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1^{1/2} S_2 S_1^{1/2})^{1/2}).
Features are the ``FEATURE_DIM``-dimensional penultimate layer of :class:`DigitsClassifier`, a small
CNN trained on the training split of :func:`ddim.app.digits.data.load_digits_split` (weights shipped as
``ddim/app/digits/weights/digits_classifier.safetensors``). The reference statistics are those of the 1,500
training digits. FID is biased upwards at small sample counts, so compare only equal counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ddim.app.digits.classifier import DigitsClassifier, load_classifier
from ddim.app.digits.data import SAMPLE_SHAPE, DigitsSplit, batch_shape_text, load_digits_split
from ddim.validation import ArgumentValueError, check_int


@dataclass(frozen=True)
class FeatureStatistics:
    """Mean (d,) and covariance (d, d) of a set of features, float64."""

    mean: np.ndarray
    covariance: np.ndarray
    count: int


def feature_statistics(features: torch.Tensor | np.ndarray) -> FeatureStatistics:
    """Mean and unbiased covariance of ``features`` (N, d), N >= 2."""
    values = np.asarray(features, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] < 2:
        raise ArgumentValueError(f"features must have shape (N >= 2, d), got {values.shape}")
    return FeatureStatistics(values.mean(0), np.cov(values, rowvar=False), values.shape[0])


def frechet_distance(a: FeatureStatistics, b: FeatureStatistics) -> float:
    """||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^{1/2} S_b S_a^{1/2})^{1/2}) (Frechet distance of Gaussians).

    The trace of the matrix square root is the sum of square roots of the (non-negative) eigenvalues
    of the symmetric matrix S_a^{1/2} S_b S_a^{1/2}.
    """
    values, vectors = np.linalg.eigh(a.covariance)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    middle = root_a @ b.covariance @ root_a
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    difference = a.mean - b.mean
    return float(difference @ difference + np.trace(a.covariance) + np.trace(b.covariance) - 2 * cross)


class DigitsFID:
    """digits-FID against the training digits: ``fid(samples)`` for samples (N, 1, 8, 8) in [-1, 1]."""

    def __init__(self, classifier: DigitsClassifier | None = None, data: DigitsSplit | None = None) -> None:
        self.classifier = classifier if classifier is not None else load_classifier()
        self.data = data if data is not None else load_digits_split()
        self.reference = self.statistics(self.data.train_images)

    @torch.no_grad()
    def features(self, samples: torch.Tensor) -> torch.Tensor:
        """Classifier features of ``samples`` (clipped to [-1, 1], the range of real digits)."""
        if samples.ndim != 4 or tuple(samples.shape[1:]) != SAMPLE_SHAPE:
            raise ArgumentValueError(f"samples must have shape {batch_shape_text()}, got {tuple(samples.shape)}")
        return self.classifier.features(samples.detach().float().cpu().clamp(-1, 1))

    def statistics(self, samples: torch.Tensor) -> FeatureStatistics:
        return feature_statistics(self.features(samples))

    def __call__(self, samples: torch.Tensor) -> float:
        return frechet_distance(self.statistics(samples), self.reference)

    def floor_and_ceiling(self, count: int, seed: int) -> dict[str, float]:
        """Reference FIDs at ``count`` samples: real digits at the same count, and Gaussian noise.

        - ``resampled``: ``count`` training digits drawn with replacement (what a generator that
          reproduces the training set exactly would score; any ``count``);
        - ``held_out``: ``count`` held-out digits (drawn with ``seed``) against the training digits
          (only when ``count`` <= the 297 held-out digits);
        - ``split_half``: ``count`` training digits against the statistics of the other training digits
          (only when at least 2 are left on each side);
        - ``noise``: ``count`` images of N(0, 1) noise clipped to [-1, 1] (the ceiling).
        """
        check_int("count", count, minimum=2)
        generator = torch.Generator().manual_seed(seed)
        test, train = self.data.test_images, self.data.train_images
        result: dict[str, float] = {
            "resampled": self(train[torch.randint(0, train.shape[0], (count,), generator=generator)])
        }
        if count <= test.shape[0]:
            result["held_out"] = self(test[torch.randperm(test.shape[0], generator=generator)[:count]])
        if count <= train.shape[0] - 2:
            order = torch.randperm(train.shape[0], generator=generator)
            result["split_half"] = frechet_distance(
                self.statistics(train[order[:count]]), self.statistics(train[order[count:]])
            )
        result["noise"] = self(torch.randn((count, *SAMPLE_SHAPE), generator=generator))
        return result
