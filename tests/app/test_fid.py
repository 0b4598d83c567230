"""digits-FID: the Frechet distance, the shipped classifier, and the metric's floor and ceiling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ddim.app.digits import SAMPLE_SHAPE, load_digits_split
from ddim.app.digits.classifier import FEATURE_DIM, DigitsClassifier, accuracy, load_classifier
from ddim.app.digits.fid import DigitsFID, FeatureStatistics, feature_statistics, frechet_distance


def stats(mean: list[float], covariance: np.ndarray) -> FeatureStatistics:
    return FeatureStatistics(np.asarray(mean, dtype=np.float64), np.asarray(covariance, dtype=np.float64), 10)


def test_frechet_distance_of_one_dimensional_gaussians() -> None:
    # W2^2 between N(m1, s1^2) and N(m2, s2^2) is (m1 - m2)^2 + (s1 - s2)^2.
    a, b = stats([1.0], np.array([[4.0]])), stats([-2.0], np.array([[9.0]]))
    assert frechet_distance(a, b) == pytest.approx(9.0 + 1.0)


def test_frechet_distance_of_diagonal_gaussians() -> None:
    a = stats([0.0, 0.0, 1.0], np.diag([1.0, 4.0, 0.25]))
    b = stats([0.0, 3.0, 1.0], np.diag([9.0, 4.0, 1.0]))
    assert frechet_distance(a, b) == pytest.approx(9.0 + (1 - 3) ** 2 + 0 + (0.5 - 1) ** 2)


def test_frechet_distance_of_non_commuting_two_dimensional_gaussians() -> None:
    """For 2 x 2 covariances, tr sqrt(S_a S_b) = sqrt(tr(S_a S_b) + 2 sqrt(det S_a det S_b)) (the square roots of
    its two eigenvalues, summed). S_a = [[2, 1], [1, 2]] and S_b = diag(1, 4) do not commute: tr(S_a S_b) = 10."""
    a = stats([1.0, 0.0], np.array([[2.0, 1.0], [1.0, 2.0]]))
    b = stats([0.0, 2.0], np.diag([1.0, 4.0]))
    cross = math.sqrt(10.0 + 2.0 * math.sqrt(3.0 * 4.0))
    assert frechet_distance(a, b) == pytest.approx(5.0 + 4.0 + 5.0 - 2.0 * cross, rel=1e-12)


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 8), st.integers(0, 2**31 - 1))
def test_frechet_distance_of_full_covariances_matches_scipys_square_root(dim: int, seed: int) -> None:
    """Random full (non-commuting) covariances against tr sqrtm(S_a S_b) from scipy (a dependency of scikit-learn)."""
    rng = np.random.default_rng(seed)
    m1, m2 = rng.normal(size=(dim, dim)), rng.normal(size=(dim, dim))
    a = stats(list(rng.normal(size=dim)), m1 @ m1.T + 0.1 * np.eye(dim))
    b = stats(list(rng.normal(size=dim)), m2 @ m2.T + 0.1 * np.eye(dim))
    assert np.abs(a.covariance @ b.covariance - b.covariance @ a.covariance).max() > 1e-3
    cross = np.trace(scipy.linalg.sqrtm(a.covariance @ b.covariance)).real
    difference = a.mean - b.mean
    expected = difference @ difference + np.trace(a.covariance) + np.trace(b.covariance) - 2 * cross
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-7, abs=1e-7)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_frechet_distance_is_symmetric_non_negative_and_zero_on_itself(dim: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    m1, m2 = rng.normal(size=(dim, dim)), rng.normal(size=(dim, dim))
    a = stats(list(rng.normal(size=dim)), m1 @ m1.T + 0.1 * np.eye(dim))
    b = stats(list(rng.normal(size=dim)), m2 @ m2.T + 0.1 * np.eye(dim))
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-6, abs=1e-8)
    assert frechet_distance(a, b) >= -1e-8
    assert abs(frechet_distance(a, a)) < 1e-6 * (1 + np.trace(a.covariance))


def test_feature_statistics_rejects_too_few_rows() -> None:
    with pytest.raises(ValueError, match=r"features must have shape"):
        feature_statistics(np.zeros((1, 4)))


def test_shipped_classifier_is_at_least_98_percent_accurate_on_held_out_digits() -> None:
    data = load_digits_split()
    assert accuracy(load_classifier(), data.test_images, data.test_labels) >= 0.98


def test_classifier_features_have_the_documented_width() -> None:
    assert load_classifier().features(torch.zeros(3, 1, 8, 8)).shape == (3, FEATURE_DIM)


def test_classifier_with_wrong_tensors_is_refused(tmp_path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "wrong.safetensors"
    save_file({"body.0.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(ValueError, match="do not match DigitsClassifier"):
        load_classifier(path)


def test_untrained_classifier_is_near_chance() -> None:
    torch.manual_seed(0)
    data = load_digits_split()
    assert accuracy(DigitsClassifier().eval(), data.test_images, data.test_labels) < 0.5


@pytest.fixture(scope="module")
def fid() -> DigitsFID:
    return DigitsFID()


def test_real_digits_score_far_below_noise(fid: DigitsFID) -> None:
    reference = fid.floor_and_ceiling(200, seed=0)
    assert reference["held_out"] < reference["noise"] / 20
    assert reference["split_half"] < reference["noise"] / 20


def test_fid_falls_as_samples_are_mixed_with_real_digits(fid: DigitsFID) -> None:
    generator = torch.Generator().manual_seed(0)
    real = fid.data.test_images[:200]
    noise = torch.randn((200, *SAMPLE_SHAPE), generator=generator)
    half = torch.cat([real[:100], noise[:100]])
    assert fid(real) < fid(half) < fid(noise)


def test_fid_rejects_wrong_shapes(fid: DigitsFID) -> None:
    with pytest.raises(ValueError, match=r"samples must have shape \(N, 1, 8, 8\)"):
        fid(torch.zeros(4, 8, 8))


def test_floor_rejects_bad_counts_and_skips_real_sets_smaller_than_the_count(fid: DigitsFID) -> None:
    with pytest.raises(ValueError, match="count=1 is out of range"):
        fid.floor_and_ceiling(1, seed=0)
    assert set(fid.floor_and_ceiling(400, seed=0)) == {"resampled", "split_half", "noise"}
    large = fid.floor_and_ceiling(1499, seed=0)
    assert set(large) == {"resampled", "noise"}
    assert large["resampled"] < large["noise"] / 100


@pytest.mark.slow
def test_resampled_floor_falls_with_the_count(fid: DigitsFID) -> None:
    small = [fid.floor_and_ceiling(100, seed)["resampled"] for seed in range(3)]
    large = [fid.floor_and_ceiling(1000, seed)["resampled"] for seed in range(3)]
    assert max(large) < min(small)
