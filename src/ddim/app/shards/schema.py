"""The structure of a manifest and of a shard record, checked in one place before anything uses them.

A manifest is ``{"format", "config", "shards", "runs", "complete"}``; ``config`` holds the run identity
(:func:`ddim.app.shards.manifest.run_identity`), of which the layout (``num_samples``, ``shard_size``),
the seed and ``sample_shape`` are used to check the shards; ``shards`` maps ``"7"`` to shard 7's record.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ddim.app.seeding import SEED_LIMIT, SEED_RULE
from ddim.app.shards.conditioning import conditioning_from_config
from ddim.app.shards.layout import FORMAT, MAX_SHARDS, ShardError, shard_file, shard_ranges
from ddim.validation import ArgumentValueError, is_int

_SHA256 = re.compile(r"[0-9a-f]{64}")
#: The integers of a manifest's config that its shards are checked against, with their bounds.
_BOUNDS: tuple[tuple[str, int, int], ...] = (
    ("num_samples", 1, SEED_LIMIT),
    ("shard_size", 1, 2**63 - 1),
    ("seed", 0, SEED_LIMIT - 1),
)


def record_problem(record: object, shard_id: int, span: tuple[int, int]) -> str | None:
    """Why ``record`` is not a well-formed record of shard ``shard_id`` holding ``span``, or None if it is."""
    if not isinstance(record, dict):
        return "is not a JSON object"
    expected = {"shard": shard_id, "file": shard_file(shard_id), "start": span[0], "stop": span[1]}
    for key, value in expected.items():
        if key not in record:
            return f".{key} is missing"
        if record[key] != value or isinstance(record[key], bool):
            return f".{key}={record[key]!r} does not match the layout (expected {value!r})"
    if not is_int(record.get("bytes")) or record["bytes"] < 0:
        return f".bytes={record.get('bytes')!r} is not a byte count"
    if not isinstance(record.get("sha256"), str) or not _SHA256.fullmatch(record["sha256"]):
        return f".sha256={record.get('sha256')!r} is not a SHA-256 hex digest"
    return None


def check_manifest(manifest: object, path: Path) -> dict[str, Any]:
    """``manifest`` (read from ``path``) after checking its structure; :class:`ShardError` naming the damaged field."""

    def damaged(field: str, why: str) -> ShardError:
        return ShardError(f"{path} is damaged: {field}{'' if why[:1] in '.=' else ' '}{why}")

    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ShardError(f"{path} is not a ddim shard manifest (expected format {FORMAT!r})")
    config = manifest.get("config")
    if not isinstance(config, dict):
        raise damaged("config", "is missing or not a JSON object")
    for key, minimum, maximum in _BOUNDS:
        value: Any = config.get(key)
        if not is_int(value) or not minimum <= value <= maximum:
            raise damaged(f"config.{key}", "is missing" if key not in config else f"={value!r} is not allowed")
    shape = config.get("sample_shape")
    if not isinstance(shape, list) or not shape or not all(is_int(d) and d >= 1 for d in shape):
        raise damaged("config.sample_shape", f"={shape!r} is not a list of sizes >= 1")
    if config.get("seed_rule") != SEED_RULE:
        raise damaged("config.seed_rule", f"={config.get('seed_rule')!r} is not this version's rule {SEED_RULE!r}")
    count = -(-config["num_samples"] // config["shard_size"])
    if count > MAX_SHARDS:
        raise damaged(
            "config",
            f"num_samples={config['num_samples']} with shard_size={config['shard_size']} makes {count} shards; "
            f"at most {MAX_SHARDS} are allowed",
        )
    try:
        conditioning_from_config(config)  # None for an unconditional run
    except ArgumentValueError as error:
        raise damaged("config.conditioning", f"is not well formed ({error})") from error
    spans = shard_ranges(config["num_samples"], config["shard_size"])
    shards = manifest.get("shards")
    if not isinstance(shards, dict):
        raise damaged("shards", "is missing or not a JSON object (shard number -> record)")
    for key, record in shards.items():
        if not re.fullmatch(r"0|[1-9][0-9]*", key):
            raise damaged(f"shards[{key!r}]", "is not a shard number")
        if int(key) >= len(spans):
            raise damaged(
                f"shards[{key!r}]",
                f"is beyond the layout (num_samples={config['num_samples']} and shard_size={config['shard_size']} "
                f"make {len(spans)} shards)",
            )
        problem = record_problem(record, int(key), spans[int(key)])
        if problem is not None:
            raise damaged(f"shards[{key!r}]", problem)
    runs = manifest.get("runs")
    if not isinstance(runs, list) or not all(isinstance(run, dict) for run in runs):
        raise damaged("runs", "is missing or not a list of JSON objects")
    if not isinstance(manifest.get("complete", False), bool):
        raise damaged("complete", f"={manifest['complete']!r} is not true or false")
    return manifest
