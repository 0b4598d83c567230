"""The embedded digits model: a small epsilon-prediction UNet for scikit-learn's 8x8 digits.

Data: ``sklearn.datasets.load_digits`` (1,797 images, pixel values 0..16) mapped to [-1, 1] by
x = v / 8 - 1, split once into a training and a held-out set (:func:`load_digits_split`).

The shipped weights (``ddim/weights/digits_unet.safetensors``, EMA weights) and their config
(``digits_unet.json``: architecture and scheduler config) load through :func:`load_pretrained`.
Weights are only ever read with safetensors; pickle files are refused, never unpickled.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ddim.scheduler import DDIMScheduler

IMAGE_SIZE = 8
#: Pixel values of ``load_digits`` run over 0..16.
PIXEL_MAX = 16.0
WEIGHTS_NAME = "digits_unet.safetensors"
CONFIG_NAME = "digits_unet.json"
#: The held-out split: this many digits, drawn (stratified by label) with this seed.
TEST_SIZE = 297
SPLIT_SEED = 0


# --------------------------------------------------------------------------- data
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


def to_images(x: torch.Tensor) -> np.ndarray:
    """Samples in [-1, 1] of shape (B, 1, 8, 8) or (B, 8, 8) -> uint8 array (B, 8, 8), 0 black, 255 white.

    Values outside [-1, 1] are clipped (pixel = round(255 (x + 1) / 2)).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3:
        raise ValueError(f"x must have shape (B, 1, H, W) or (B, H, W), got {tuple(x.shape)}")
    pixels = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()
    return pixels.to(torch.uint8).numpy()


# --------------------------------------------------------------------------- model
@dataclass(frozen=True)
class UNetConfig:
    """Architecture of :class:`DigitsUNet`: ``channels`` at 8x8, ``2 * channels`` at 4x4."""

    channels: int = 32
    time_dim: int = 64
    groups: int = 8

    def __post_init__(self) -> None:
        check_positive_ints(self, ("channels", "time_dim", "groups"))
        if self.channels % self.groups:
            raise ValueError(f"channels={self.channels} must be divisible by groups={self.groups}")


def check_positive_int(name: str, value: object) -> None:
    """``ValueError`` naming ``name`` unless ``value`` is an int >= 1 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} is not allowed; it must be a positive int")


def check_positive_ints(owner: object, names: Sequence[str]) -> None:
    """``ValueError`` naming the first attribute of ``owner`` in ``names`` that is not an int >= 1."""
    for name in names:
        check_positive_int(name, getattr(owner, name))


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos(t w_k), sin(t w_k)] with w_k = max_period^(-k / (dim / 2)) (Transformer, DDPM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the timestep embedding added in between, plus a (1x1) skip."""

    def __init__(self, in_channels: int, out_channels: int, time_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time = nn.Linear(time_dim, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = h + self.time(emb)[:, :, None, None]
        h = self.conv2(nn.functional.silu(self.norm2(h)))
        return self.skip(x) + h


class DigitsUNet(nn.Module):
    """Epsilon-prediction UNet for (B, 1, 8, 8) inputs: 8x8 -> 4x4 -> 8x8 with one skip connection.

    ``forward(x, t)`` takes x_t and integer timesteps t (a 1-D tensor of one per row, or a scalar)
    and returns the predicted noise epsilon_theta(x_t, t) (DDPM, eq. 11 of Ho et al.).
    """

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or UNetConfig()
        c, d, g = self.config.channels, self.config.time_dim, self.config.groups
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.down_block = ResBlock(c, c, d, g)
        self.down = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)
        self.mid1 = ResBlock(2 * c, 2 * c, d, g)
        self.mid2 = ResBlock(2 * c, 2 * c, d, g)
        self.up = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.up_block = ResBlock(2 * c, c, d, g)
        self.out_norm = nn.GroupNorm(g, c)
        self.out = nn.Conv2d(c, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_mlp(timestep_embedding(t, self.config.time_dim))
        h0 = self.down_block(self.stem(x), emb)
        h = self.mid2(self.mid1(self.down(h0), emb), emb)
        h = self.up_block(torch.cat([self.up(h), h0], dim=1), emb)
        return self.out(nn.functional.silu(self.out_norm(h)))


# --------------------------------------------------------------------------- weights
def weights_dir() -> Path:
    """The folder of the shipped weights inside the installed package."""
    return Path(str(resources.files("ddim") / "weights"))


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; ``ValueError`` for a missing, unreadable, pickle or non-safetensors file.

    Never unpickles: a file that starts like a pickle or a PyTorch zip archive is refused unread.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = Path(path)
    if not file.is_file():
        raise ValueError(f"model path {str(file)!r} does not exist or is not a file")
    try:
        with file.open("rb") as handle:
            head = handle.read(2)
    except OSError as error:
        raise ValueError(f"model path {str(file)!r} cannot be read: {error.strerror}") from error
    if head[:1] == b"\x80" or head == b"PK":
        raise ValueError(
            f"model file {str(file)!r} is a pickle/PyTorch checkpoint; refused (pickle can run code). "
            "Convert it to safetensors"
        )
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"model file {str(file)!r} is not a readable safetensors file: {error}") from error


def unet_from_state_dict(state: dict[str, torch.Tensor], config: UNetConfig) -> DigitsUNet:
    """A :class:`DigitsUNet` holding ``state``; ``ValueError`` naming missing, unexpected or mis-shaped tensors."""
    model = DigitsUNet(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"weights do not match the digits UNet (channels={config.channels}): "
            f"missing tensors {missing[:5]}, unexpected tensors {unexpected[:5]}"
        )
    for name, tensor in expected.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise ValueError(
                f"weights tensor {name!r} has shape {tuple(state[name].shape)}, the digits UNet "
                f"(channels={config.channels}) needs {tuple(tensor.shape)}"
            )
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval()


def read_model_config(path: str | Path) -> dict[str, Any]:
    """The JSON config next to a weights file: ``{"unet": {...}, "scheduler": {...}, ...}``."""
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"model config {str(path)!r} cannot be read as JSON: {error}") from error
    if not isinstance(config, dict) or not isinstance(config.get("unet"), dict):
        raise ValueError(f"model config {str(path)!r} must be a JSON object with a 'unet' object")
    return config


def unet_config_from_dict(values: dict[str, Any]) -> UNetConfig:
    """A :class:`UNetConfig` from a dict, rejecting unknown keys."""
    known = set(asdict(UNetConfig()))
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown UNet config keys {unknown}; allowed keys are {sorted(known)}")
    return UNetConfig(**values)


def scheduler_from_config(config: dict[str, Any]) -> DDIMScheduler:
    """The scheduler recommended for a model config (its ``scheduler`` entry, else ``clip_sample=False``)."""
    return DDIMScheduler(**config.get("scheduler", {"clip_sample": False}))


def load_model(
    weights: str | Path, config_path: str | Path | None = None, device: str | torch.device = "cpu"
) -> tuple[DigitsUNet, DDIMScheduler]:
    """Load a safetensors UNet of the embedded architecture and its scheduler.

    The config is read from ``config_path``, else from a ``.json`` file next to ``weights`` with the
    same stem, else the shipped config (architecture and scheduler of the embedded model).
    """
    weights = Path(weights)
    if config_path is None:
        sibling = weights.with_suffix(".json")
        config_path = sibling if sibling.is_file() else weights_dir() / CONFIG_NAME
    config = read_model_config(config_path)
    model = unet_from_state_dict(load_state_dict(weights), unet_config_from_dict(config["unet"]))
    return model.to(device), scheduler_from_config(config)


def load_pretrained(device: str | torch.device = "cpu") -> tuple[DigitsUNet, DDIMScheduler]:
    """The embedded digits model (EMA weights, eval mode) and the scheduler configured for it.

    The scheduler has ``clip_sample=False``: clipping x_0 while stepping with the unclipped epsilon
    (diffusers' default) degrades deterministic sampling as the number of steps grows (see README).
    """
    return load_model(weights_dir() / WEIGHTS_NAME, weights_dir() / CONFIG_NAME, device)
