"""The layout of a shard directory: file names, format constants, and the partition into shards and ranks."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from ddim.validation import ArgumentValueError, check_int

MANIFEST_NAME = "manifest.json"
#: The lock file of the job writing the directory (see :mod:`.lock`).
LOCK_NAME = ".lock"
#: The folder of the ``--png`` images.
IMAGES_NAME = "images"
FORMAT = "ddim-shards/1"
SAMPLE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: Most shards of one directory: its manifest (about 250 bytes per shard) stays within :data:`MAX_MANIFEST_BYTES`,
#: and a layout read from a tampered manifest costs at most this many checks.
MAX_SHARDS = 100_000
#: Largest manifest and largest shard record (or lock file) read, in bytes.
MAX_MANIFEST_BYTES = 64 << 20
MAX_RECORD_BYTES = 1 << 16


class ShardError(ArgumentValueError):
    """A shard directory that cannot be used as it is: shards missing or corrupt, a damaged manifest, a busy lock."""


def shard_count(num_samples: int, shard_size: int) -> int:
    """``ceil(num_samples / shard_size)``, after checking it is at most :data:`MAX_SHARDS`."""
    check_int("num_samples", num_samples, minimum=1)
    check_int("shard_size", shard_size, minimum=1)
    count = -(-num_samples // shard_size)
    if count > MAX_SHARDS:
        raise ArgumentValueError(
            f"num_samples={num_samples} with shard_size={shard_size} makes {count} shards; at most {MAX_SHARDS} "
            f"are allowed: use shard_size >= {-(-num_samples // MAX_SHARDS)}"
        )
    return count


def shard_ranges(num_samples: int, shard_size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of every shard: shard s holds ``[s * shard_size, min((s + 1) * shard_size, N))``.

    At most :data:`MAX_SHARDS` shards (:func:`shard_count`).
    """
    shard_count(num_samples, shard_size)
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


def parse_shard_name(name: str) -> tuple[int, str] | None:
    """``(shard_id, "npz" | "json")`` for a shard or record file name as this package writes it, else None."""
    match = re.fullmatch(r"shard-(\d{5,})\.(npz|json)", name)
    if match is None or f"shard-{int(match.group(1)):05d}" != name[: -len(match.group(2)) - 1]:
        return None
    return int(match.group(1)), match.group(2)
