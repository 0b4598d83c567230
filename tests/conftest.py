"""Shared test fixtures."""

from __future__ import annotations

from typing import Any

import torch


def make_tiny_unet() -> Any:
    """A tiny randomly initialised diffusers ``UNet2DModel`` (3 x 8 x 8, seeded): no hub access needed."""
    import diffusers

    torch.manual_seed(0)
    model = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    return model.eval()
