"""A Diffusion-Policy-sized conditional 1-D UNet (random weights) for the latency benchmark.

The shape of the network robot policies sample with DDIM (Chi et al. 2023, "Diffusion Policy",
its CNN variant): an action chunk (batch, horizon, action_dim) is denoised by a 1-D UNet over the
horizon with channels 256/512/1024, every residual block made of two Conv1d-GroupNorm-Mish blocks
and FiLM-conditioned (per-channel scale and bias) on [time embedding, observation features].
The time embedding is sinusoidal (dim 256) followed by Linear-Mish-Linear. Written here from that
description; the weights are random (latency does not depend on them).
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn


class SinusoidalEmbedding(nn.Module):
    """[sin(t w_i), cos(t w_i)] with w_i = 10000^(-i / (dim/2 - 1)), i < dim / 2."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        half = dim // 2
        frequencies = torch.exp(torch.arange(half) * (-math.log(10000.0) / (half - 1)))
        self.register_buffer("frequencies", frequencies, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.float()[:, None] * self.frequencies[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


def conv_block(channels_in: int, channels_out: int, kernel: int = 5, groups: int = 8) -> nn.Sequential:
    """Conv1d (same padding) -> GroupNorm -> Mish."""
    return nn.Sequential(
        nn.Conv1d(channels_in, channels_out, kernel, padding=kernel // 2),
        nn.GroupNorm(groups, channels_out),
        nn.Mish(),
    )


class FiLMResidualBlock(nn.Module):
    """x -> block1 -> scale * h + bias (from the condition) -> block2, plus a 1x1-conv residual."""

    def __init__(self, channels_in: int, channels_out: int, cond_dim: int) -> None:
        super().__init__()
        self.block1 = conv_block(channels_in, channels_out)
        self.block2 = conv_block(channels_out, channels_out)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * channels_out))
        self.residual = nn.Conv1d(channels_in, channels_out, 1) if channels_in != channels_out else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, bias = self.film(cond).unsqueeze(-1).chunk(2, dim=1)
        h = self.block1(x) * scale + bias
        return self.block2(h) + self.residual(x)


class ConditionalUnet1D(nn.Module):
    """``model(x, t, global_cond)``: x (batch, horizon, action_dim), t 0-dim or (batch,), global_cond
    (batch, obs_dim); returns the noise prediction shaped like x."""

    def __init__(
        self,
        action_dim: int = 7,
        obs_dim: int = 128,
        channels: tuple[int, ...] = (256, 512, 1024),
        time_dim: int = 256,
    ) -> None:
        super().__init__()
        self.time = nn.Sequential(
            SinusoidalEmbedding(time_dim),
            nn.Linear(time_dim, 4 * time_dim),
            nn.Mish(),
            nn.Linear(4 * time_dim, time_dim),
        )
        cond_dim = time_dim + obs_dim
        widths = [action_dim, *channels]
        self.down = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(itertools.pairwise(widths)):
            last = i == len(channels) - 1
            sample = nn.Identity() if last else nn.Conv1d(c_out, c_out, 3, stride=2, padding=1)
            self.down.append(
                nn.ModuleList(
                    [FiLMResidualBlock(c_in, c_out, cond_dim), FiLMResidualBlock(c_out, c_out, cond_dim), sample]
                )
            )
        self.mid = nn.ModuleList([FiLMResidualBlock(channels[-1], channels[-1], cond_dim) for _ in range(2)])
        self.up = nn.ModuleList()
        for c_out, c_in in reversed(list(itertools.pairwise(channels))):  # the first level's skip is unused
            sample = nn.ConvTranspose1d(c_out, c_out, 4, stride=2, padding=1)
            self.up.append(
                nn.ModuleList(
                    [FiLMResidualBlock(2 * c_in, c_out, cond_dim), FiLMResidualBlock(c_out, c_out, cond_dim), sample]
                )
            )
        self.head = nn.Sequential(conv_block(channels[0], channels[0]), nn.Conv1d(channels[0], action_dim, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, global_cond: torch.Tensor) -> torch.Tensor:
        if t.ndim == 0:  # a pipeline's timestep: one for the whole batch
            t = t[None].to(x.device)
        cond = torch.cat([self.time(t.expand(x.shape[0])), global_cond], dim=-1)
        h = x.transpose(1, 2)
        skips = []
        for first, second, sample in self.down:  # type: ignore[misc]
            h = second(first(h, cond), cond)
            skips.append(h)
            h = sample(h)
        for block in self.mid:
            h = block(h, cond)
        for first, second, sample in self.up:  # type: ignore[misc]
            h = second(first(torch.cat([h, skips.pop()], dim=1), cond), cond)
            h = sample(h)
        return self.head(h).transpose(1, 2)
