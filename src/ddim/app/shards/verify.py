"""Reading a shard directory back: verification of every shard, loading all samples, merging into one file."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ddim.app.shards.files import npz_bytes, read_manifest, read_npz, shard_problem, shard_records
from ddim.app.shards.layout import ShardError, shard_file, shard_ranges
from ddim.atomic import write_bytes_atomically
from ddim.validation import ArgumentValueError


@dataclass
class VerifyReport:
    """The state of every shard of a directory: which are complete, missing or corrupt (and why)."""

    out_dir: Path
    num_samples: int
    num_shards: int
    complete: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    corrupt: dict[int, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.corrupt

    def describe(self) -> str:
        lines = [f"{self.out_dir}: {len(self.complete)}/{self.num_shards} shards complete ({self.num_samples} samples)"]
        if self.missing:
            lines.append(f"missing shards: {', '.join(shard_file(s) for s in self.missing)}")
        lines.extend(f"corrupt shard {shard_file(s)}: {why}" for s, why in sorted(self.corrupt.items()))
        lines.append("OK" if self.ok else "FAILED: rerun the same generation command to redo these shards")
        return "\n".join(lines)


def verify_shards(out_dir: str | os.PathLike[str]) -> VerifyReport:
    """Check the manifest and every shard (existence, SHA-256, indices) of an output directory."""
    directory = Path(out_dir)
    manifest = read_manifest(directory)
    config = manifest["config"]
    spans = shard_ranges(config["num_samples"], config["shard_size"])
    records = shard_records(directory, manifest)
    report = VerifyReport(directory, config["num_samples"], len(spans))
    for shard_id, span in enumerate(spans):
        problem = shard_problem(directory, shard_id, span, records.get(shard_id))
        if problem is None:
            report.complete.append(shard_id)
        elif problem == "missing":
            report.missing.append(shard_id)
        else:
            report.corrupt[shard_id] = problem
    return report


def load_samples(out_dir: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """All samples of a verified directory in index order: arrays ``indices``, ``seeds``, ``samples``.

    Raises :class:`ShardError` (with the report) if any shard is missing or corrupt.
    """
    report = verify_shards(out_dir)
    if not report.ok:
        raise ShardError(report.describe())
    parts = [read_npz((report.out_dir / shard_file(s)).read_bytes()) for s in report.complete]
    merged = {name: np.concatenate([part[name] for part in parts]) for name in ("indices", "seeds", "samples")}
    if not np.array_equal(merged["indices"], np.arange(report.num_samples)):
        raise ShardError(f"{report.out_dir}: the shards do not hold each index 0..{report.num_samples - 1} once")
    return merged


def merge_shards(out_dir: str | os.PathLike[str], output: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Verify ``out_dir`` and write all its samples, in index order, to one ``.npz`` at ``output`` (atomic)."""
    target = Path(output)
    if target.exists() and not overwrite:
        raise ArgumentValueError(f"output={str(target)!r} exists; pass overwrite=True (CLI: --force) to replace it")
    if not target.parent.is_dir():
        raise ArgumentValueError(f"output={str(target)!r}: folder {str(target.parent)!r} does not exist")
    write_bytes_atomically(target, npz_bytes(load_samples(out_dir)))
    return target
