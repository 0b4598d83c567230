"""scikit-learn's 8x8 digits as diffusion training data: the fixed split (pixels: :func:`ddim.app.images.to_images`).

Data: ``sklearn.datasets.load_digits`` (1,797 images, pixel values 0..16) mapped to [-1, 1] by
x = v / 8 - 1, split once into a training and a held-out set (:func:`load_digits_split`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

#: Pixel values of ``load_digits`` run over 0..16.
PIXEL_MAX = 16.0
#: The held-out split: this many digits, drawn (stratified by label) with this seed.
TEST_SIZE = 297
SPLIT_SEED = 0
#: The shape of one digit (channels, height, width): what the digits models sample and the metrics take.
SAMPLE_SHAPE: tuple[int, int, int] = (1, 8, 8)


def batch_shape_text(batch: str = "N") -> str:
    """A batch of digits' shape as messages write it: ``"(N, 1, 8, 8)"``."""
    return f"({batch}, {', '.join(map(str, SAMPLE_SHAPE))})"


@dataclass(frozen=True)
class DigitsSplit:
    """Training and held-out digits as float32 tensors (N, 1, 8, 8) in [-1, 1], with int64 labels."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def load_digits_split() -> DigitsSplit:
    """The fixed split of scikit-learn's digits: 1,500 training and 297 held-out images (stratified, seed 0)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = data.images.astype(np.float32) / (PIXEL_MAX / 2) - 1.0
    labels = data.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=labels
    )
    return DigitsSplit(
        train_images=torch.from_numpy(x_train).unsqueeze(1),
        train_labels=torch.from_numpy(y_train),
        test_images=torch.from_numpy(x_test).unsqueeze(1),
        test_labels=torch.from_numpy(y_test),
    )
