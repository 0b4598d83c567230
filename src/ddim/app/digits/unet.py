"""The embedded digits models' network: a small UNet for (B, 1, 8, 8) inputs, optionally class-conditional."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ddim.validation import ArgumentTypeError, ArgumentValueError, check_int

#: Upper bounds of :class:`UNetConfig`: at both, the network has ~290M parameters (1.2 GB in float32),
#: 20x the width of the shipped model; larger configs only ever come from mistakes or hostile files.
MAX_CHANNELS = 1024
MAX_TIME_DIM = 4096
#: Most class labels of a conditional :class:`DigitsUNet` (the digits model has 11: 0-9 and a null label).
MAX_CLASSES = 1024


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of :class:`DigitsUNet`: ``channels`` at 8x8, ``2 * channels`` at 4x4.

    ``channels`` in 1..MAX_CHANNELS and divisible by ``groups``; ``time_dim`` even, in 2..MAX_TIME_DIM;
    ``num_classes`` 0 (unconditional, the default) or 2..MAX_CLASSES labels of a class embedding.
    """

    channels: int = 32
    time_dim: int = 64
    groups: int = 8
    num_classes: int = 0

    def __post_init__(self) -> None:
        check_int("channels", self.channels, 1, MAX_CHANNELS)
        check_int("time_dim", self.time_dim, 2, MAX_TIME_DIM)
        check_int("groups", self.groups, minimum=1)
        if check_int("num_classes", self.num_classes, 0, MAX_CLASSES) == 1:
            raise ArgumentValueError("num_classes=1 is not allowed; use 0 (unconditional) or 2..1024 labels")
        if self.channels % self.groups:
            raise ArgumentValueError(f"channels={self.channels} must be divisible by groups={self.groups}")
        if self.time_dim % 2:
            raise ArgumentValueError(f"time_dim={self.time_dim} must be even (a cosine and a sine half)")

    def to_dict(self) -> dict[str, int]:
        """The config as a JSON-ready dict; ``num_classes`` only when conditional (as the older files have it)."""
        values = asdict(self)
        if not self.num_classes:
            del values["num_classes"]
        return values


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
    """UNet for (B, 1, 8, 8) inputs: 8x8 -> 4x4 -> 8x8 with one skip connection.

    ``forward(x, t)`` takes x_t and integer timesteps t (a 1-D tensor of one per row, or a scalar)
    and returns the model's prediction: epsilon_theta(x_t, t) for the unconditional digits model
    (DDPM, eq. 11 of Ho et al.). With ``config.num_classes > 0`` it also takes ``labels`` (an int, or
    one per row) and adds a learned class embedding to the timestep embedding:
    emb = MLP(sinusoid(t)) + E[label]; ``forward(x, t, labels)``.
    """

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or UNetConfig()
        c, d, g = self.config.channels, self.config.time_dim, self.config.groups
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        if self.config.num_classes:
            self.class_embedding = nn.Embedding(self.config.num_classes, d)
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.down_block = ResBlock(c, c, d, g)
        self.down = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)
        self.mid1 = ResBlock(2 * c, 2 * c, d, g)
        self.mid2 = ResBlock(2 * c, 2 * c, d, g)
        self.up = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.up_block = ResBlock(2 * c, c, d, g)
        self.out_norm = nn.GroupNorm(g, c)
        self.out = nn.Conv2d(c, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor | int, labels: torch.Tensor | int | None = None) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_mlp(timestep_embedding(t, self.config.time_dim).to(next(self.time_mlp.parameters()).dtype))
        if self.config.num_classes:
            emb = emb + self.class_embedding(self.check_labels(labels, x.shape[0], x.device))
        elif labels is not None:
            raise ArgumentValueError("labels were given to an unconditional DigitsUNet (num_classes=0)")
        h0 = self.down_block(self.stem(x), emb)
        h = self.mid2(self.mid1(self.down(h0), emb), emb)
        h = self.up_block(torch.cat([self.up(h), h0], dim=1), emb)
        return self.out(nn.functional.silu(self.out_norm(h)))

    def check_labels(self, labels: torch.Tensor | int | None, batch: int, device: torch.device) -> torch.Tensor:
        """``labels`` as a (batch,) int64 tensor after checking 0 <= label < num_classes."""
        if labels is None:
            raise ArgumentValueError(
                f"labels are needed: this DigitsUNet is conditional (num_classes={self.config.num_classes})"
            )
        labels = torch.as_tensor(labels, device=device)
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ArgumentTypeError(f"labels must be integers, got dtype {labels.dtype}")
        if labels.ndim == 0:
            labels = labels.expand(batch)
        if labels.shape != (batch,):
            raise ArgumentValueError(f"labels must be an int or have shape ({batch},), got {tuple(labels.shape)}")
        if labels.device.type == "cpu":  # elsewhere a bad label fails in the embedding (no host sync here)
            low, high = int(labels.min()), int(labels.max())
            if low < 0 or high >= self.config.num_classes:
                raise ArgumentValueError(f"labels must lie in 0..{self.config.num_classes - 1}, got {low}..{high}")
        return labels.long()
