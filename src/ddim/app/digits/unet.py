"""The embedded digits model's network: a small epsilon-prediction UNet for (B, 1, 8, 8) inputs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ddim.validation import ArgumentValueError, check_int

#: Upper bounds of :class:`UNetConfig`: at both, the network has ~290M parameters (1.2 GB in float32),
#: 20x the width of the shipped model; larger configs only ever come from mistakes or hostile files.
MAX_CHANNELS = 1024
MAX_TIME_DIM = 4096


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of :class:`DigitsUNet`: ``channels`` at 8x8, ``2 * channels`` at 4x4.

    ``channels`` in 1..MAX_CHANNELS and divisible by ``groups``; ``time_dim`` even, in 2..MAX_TIME_DIM.
    """

    channels: int = 32
    time_dim: int = 64
    groups: int = 8

    def __post_init__(self) -> None:
        check_int("channels", self.channels, 1, MAX_CHANNELS)
        check_int("time_dim", self.time_dim, 2, MAX_TIME_DIM)
        check_int("groups", self.groups, minimum=1)
        if self.channels % self.groups:
            raise ArgumentValueError(f"channels={self.channels} must be divisible by groups={self.groups}")
        if self.time_dim % 2:
            raise ArgumentValueError(f"time_dim={self.time_dim} must be even (a cosine and a sine half)")


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
