"""The layout of a shard directory: file names, format constants, and the partition into shards and ranks."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ddim.validation import ArgumentValueError, check_int

MANIFEST_NAME = "manifest.json"
FORMAT = "ddim-shards/1"
SAMPLE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ShardError(ArgumentValueError):
    """An output directory whose shards fail verification (missing or corrupt)."""


def shard_ranges(num_samples: int, shard_size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of every shard: shard s holds ``[s * shard_size, min((s + 1) * shard_size, N))``."""
    check_int("num_samples", num_samples, minimum=1)
    check_int("shard_size", shard_size, minimum=1)
    return [(start, min(start + shard_size, num_samples)) for start in range(0, num_samples, shard_size)]


def rank_shards(shard_ids: Sequence[int], rank: int, world_size: int) -> list[int]:
    """The shards of ``rank``: every ``world_size``-th of ``shard_ids`` from position ``rank`` (disjoint)."""
    check_int("world_size", world_size, minimum=1)
    if not 0 <= rank < world_size:
        raise ArgumentValueError(f"rank={rank} is out of range; allowed 0..{world_size - 1} (world_size={world_size})")
    return list(shard_ids[rank::world_size])


def shard_file(shard_id: int) -> str:
    """The name of shard ``shard_id``'s arrays: ``shard-00012.npz``."""
    return f"shard-{shard_id:05d}.npz"


def record_file(shard_id: int) -> str:
    """The name of shard ``shard_id``'s completion record: ``shard-00012.json``."""
    return f"shard-{shard_id:05d}.json"
