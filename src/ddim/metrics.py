"""digits-FID: the Frechet distance between generated and real digits in a small classifier's features.

FID (Heusel et al. 2017): with feature means mu_1, mu_2 and covariances S_1, S_2,
d^2 = ||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1^{1/2} S_2 S_1^{1/2})^{1/2}).
Features are the ``FEATURE_DIM``-dimensional penultimate layer of :class:`DigitsClassifier`, a small
CNN trained on the training split of :func:`ddim.digits.load_digits_split` (weights shipped as
``ddim/weights/digits_classifier.safetensors``). The reference statistics are those of the 1,500
training digits. FID is biased upwards at small sample counts, so compare only equal counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ddim.digits import DigitsSplit, load_digits_split, load_state_dict, weights_dir

CLASSIFIER_NAME = "digits_classifier.safetensors"
FEATURE_DIM = 32
NUM_CLASSES = 10


class DigitsClassifier(nn.Module):
    """CNN for (B, 1, 8, 8) digits in [-1, 1]: three 3x3 convs, a 32-d feature layer, 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Dropout(0.3),
            nn.Linear(64 * 16, FEATURE_DIM),
        )
        self.head = nn.Sequential(nn.SiLU(), nn.Linear(FEATURE_DIM, NUM_CLASSES))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate features (B, FEATURE_DIM), before the non-linearity of the head."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def shift_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by -1, 0 or +1 pixel along each axis (zero padding is -1, the background)."""
    padded = nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)
    offsets = torch.randint(0, 3, (x.shape[0], 2), generator=generator)
    rows = [padded[i, :, dy : dy + 8, dx : dx + 8] for i, (dy, dx) in enumerate(offsets.tolist())]
    return torch.stack(rows)


def train_classifier(data: DigitsSplit, epochs: int = 40, seed: int = 0) -> DigitsClassifier:
    """Train :class:`DigitsClassifier` on ``data``'s training split (Adam, cross-entropy, shift augmentation)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = DigitsClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    images, labels = data.train_images, data.train_labels
    model.train()
    for _ in range(epochs):
        order = torch.randperm(images.shape[0], generator=generator)
        for start in range(0, images.shape[0], 64):
            batch = order[start : start + 64]
            loss = nn.functional.cross_entropy(model(shift_augment(images[batch], generator)), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scheduler.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: DigitsClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``images`` whose arg-max logit equals the label."""
    return float((model(images).argmax(1) == labels).float().mean())


def load_classifier(path: str | Path | None = None) -> DigitsClassifier:
    """The shipped classifier (or one saved at ``path``), in eval mode; loaded with safetensors only."""
    state = load_state_dict(path if path is not None else weights_dir() / CLASSIFIER_NAME)
    model = DigitsClassifier()
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in state.items()}
    if found != expected:
        raise ValueError("classifier weights do not match DigitsClassifier (tensor names or shapes differ)")
    model.load_state_dict(state)
    return model.eval()


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
        raise ValueError(f"features must have shape (N >= 2, d), got {values.shape}")
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
        if samples.ndim != 4 or tuple(samples.shape[1:]) != (1, 8, 8):
            raise ValueError(f"samples must have shape (N, 1, 8, 8), got {tuple(samples.shape)}")
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
        if isinstance(count, bool) or not isinstance(count, int) or count < 2:
            raise ValueError(f"count={count!r} is out of range; it must be an int >= 2")
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
        result["noise"] = self(torch.randn((count, 1, 8, 8), generator=generator))
        return result


if __name__ == "__main__":  # pragma: no cover - regenerates the shipped classifier
    import sys

    from safetensors.torch import save_file

    split = load_digits_split()
    trained = train_classifier(split)
    print("held-out accuracy", accuracy(trained, split.test_images, split.test_labels))
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, sys.argv[1])
