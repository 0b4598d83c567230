"""The digits classifier: a small CNN whose penultimate features digits-FID compares, and its shipped weights.

Trained on the training split of :func:`ddim.app.digits.data.load_digits_split` with random shifts;
weights shipped as ``ddim/app/digits/weights/digits_classifier.safetensors``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ddim.app.digits.data import DigitsSplit
from ddim.app.digits.model_files import load_state_dict, weights_dir
from ddim.validation import ArgumentValueError

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
        raise ArgumentValueError("classifier weights do not match DigitsClassifier (tensor names or shapes differ)")
    model.load_state_dict(state)
    return model.eval()


if __name__ == "__main__":  # pragma: no cover - regenerates the shipped classifier
    import sys

    from safetensors.torch import save_file

    from ddim.app.digits.data import load_digits_split

    split = load_digits_split()
    trained = train_classifier(split)
    print("held-out accuracy", accuracy(trained, split.test_images, split.test_labels))
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, sys.argv[1])
