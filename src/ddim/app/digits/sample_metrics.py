"""Per-sample measurements of generated digits: class accuracy, per-class digits-FID, over-exposure, brightness.

All take samples (N, 1, 8, 8) as sampled, before any clipping (the digits models sample with
``clip_sample=False``, so a DDIM sample is the last step's predicted x_0):

- class accuracy: the fraction the shipped classifier assigns to the requested digit;
- per-class digits-FID: for each digit d, the Frechet distance (``ddim.app.digits.fid``) between the
  features of the samples asked for d and those of the training images of d, averaged over digits;
- over-exposed fraction: the fraction of pixels with |x| > 1 + ``OVEREXPOSURE_MARGIN``, more than one grey
  level outside the data's range [-1, 1] (real digits take only the 17 levels v / 8 - 1);
- per-image pixel standard deviation and per-image mean brightness (the mean pixel, in [-1, 1] units).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ddim.app.digits.classifier import DigitsClassifier, load_classifier
from ddim.app.digits.conditional import NUM_DIGITS, check_digits
from ddim.app.digits.data import PIXEL_MAX, SAMPLE_SHAPE, DigitsSplit, batch_shape_text
from ddim.app.digits.fid import DigitsFID, feature_statistics, frechet_distance
from ddim.validation import ArgumentValueError

#: One grey level of the data (x = v / 8 - 1): a pixel counts as over-exposed beyond 1 + this in |x|.
OVEREXPOSURE_MARGIN = 2.0 / PIXEL_MAX


def check_samples(samples: torch.Tensor, name: str = "samples") -> torch.Tensor:
    """``samples`` as float32 on the CPU after checking their shape (N >= 1, 1, 8, 8)."""
    if not isinstance(samples, torch.Tensor) or samples.ndim != 4 or tuple(samples.shape[1:]) != SAMPLE_SHAPE:
        shape = tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
        raise ArgumentValueError(f"{name} must be a tensor of shape {batch_shape_text()}, got {shape}")
    if samples.shape[0] == 0:
        raise ArgumentValueError(f"{name} must hold at least one image")
    return samples.detach().float().cpu()


def overexposed_fraction(samples: torch.Tensor, margin: float = OVEREXPOSURE_MARGIN) -> float:
    """The fraction of pixels with |x| > 1 + ``margin`` (x as sampled, unclipped)."""
    return float((check_samples(samples).abs() > 1.0 + margin).float().mean())


def pixel_std(samples: torch.Tensor) -> torch.Tensor:
    """Per-image standard deviation of the pixels (N,), unclipped (ddof = 0)."""
    return check_samples(samples).flatten(1).std(dim=1, correction=0)


def mean_brightness(samples: torch.Tensor) -> torch.Tensor:
    """Per-image mean pixel (N,) in [-1, 1] units, clipped to [-1, 1] first (what an image shows)."""
    return check_samples(samples).clamp(-1, 1).flatten(1).mean(dim=1)


def digits_per_sample(samples: torch.Tensor, digits: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """``digits`` checked (0..9) as an int64 tensor with one entry per row of ``samples``."""
    wanted = check_digits(digits)
    if wanted.shape[0] != check_samples(samples).shape[0]:
        raise ArgumentValueError(f"digits must have one entry per sample ({samples.shape[0]}), got {len(wanted)}")
    return wanted


class DigitsJudge:
    """The shipped classifier's verdicts on samples of requested digits, and per-class digits-FID.

    ``reference`` gives the real images per digit (default: the training split); the per-class statistics
    are computed once.
    """

    def __init__(self, classifier: DigitsClassifier | None = None, data: DigitsSplit | None = None) -> None:
        self.fid = DigitsFID(classifier if classifier is not None else load_classifier(), data)
        self.data = self.fid.data
        images, labels = self.data.train_images, self.data.train_labels
        self.references = [self.fid.statistics(images[labels == d]) for d in range(NUM_DIGITS)]

    @torch.no_grad()
    def predicted_digits(self, samples: torch.Tensor) -> torch.Tensor:
        """The classifier's digit (N,) for each sample, clipped to [-1, 1] as for FID."""
        return self.fid.classifier(check_samples(samples).clamp(-1, 1)).argmax(dim=1)

    def accuracy(self, samples: torch.Tensor, digits: Sequence[int] | torch.Tensor) -> float:
        """The fraction of ``samples`` whose predicted digit is the requested one (``digits[i]`` for row i)."""
        wanted = digits_per_sample(samples, digits)
        return float((self.predicted_digits(samples) == wanted).float().mean())

    def per_class_fid(self, samples: torch.Tensor, digits: Sequence[int] | torch.Tensor) -> float:
        """The digits-FID of the samples of each digit against that digit's training images, averaged over digits.

        Every digit 0..9 needs at least 2 samples.
        """
        wanted = digits_per_sample(samples, digits)
        features = self.fid.features(check_samples(samples))
        distances = []
        for digit in range(NUM_DIGITS):
            rows = features[wanted == digit]
            if rows.shape[0] < 2:
                raise ArgumentValueError(
                    f"per-class FID needs >= 2 samples of every digit, got {rows.shape[0]} of {digit}"
                )
            distances.append(frechet_distance(feature_statistics(rows), self.references[digit]))
        return float(np.mean(distances))

    def per_class_floor(self, per_digit: int, seed: int) -> dict[str, float]:
        """Per-class digits-FID at ``per_digit`` samples of each digit for real and for noise images.

        ``resampled``: training images of each digit drawn with replacement (what a generator reproducing the
        training set would score); ``noise``: N(0, 1) images (clipped by the metric), the ceiling.
        """
        generator = torch.Generator().manual_seed(seed)
        images, labels = self.data.train_images, self.data.train_labels
        digits = torch.arange(NUM_DIGITS).repeat_interleave(per_digit)
        resampled = []
        for digit in range(NUM_DIGITS):
            pool = images[labels == digit]
            resampled.append(pool[torch.randint(0, pool.shape[0], (per_digit,), generator=generator)])
        noise = torch.randn((digits.shape[0], *SAMPLE_SHAPE), generator=generator)
        return {
            "resampled": self.per_class_fid(torch.cat(resampled), digits),
            "noise": self.per_class_fid(noise, digits),
        }
