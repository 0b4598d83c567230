"""Reading a shard directory back: verification of every shard, loading all samples, merging into one file."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ddim.app.atomic import TEMP_SUFFIX, write_bytes_exclusively
from ddim.app.shards.files import (
    inspect_shard,
    npz_bytes,
    read_manifest,
    shard_records,
    stray_files,
    write_file,
    writing,
)
from ddim.app.shards.layout import ShardError, parse_shard_name, shard_file, shard_ranges
from ddim.app.shards.lock import describe_owner, read_owner
from ddim.app.wording import counted


class OutputExistsError(ShardError):
    """The file a merge would write exists (and replacing it was not asked for)."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{str(path)!r} exists; pass overwrite=True to replace it")
        self.path = path


@dataclass
class VerifyReport:
    """The state of a directory: complete, missing and corrupt shards (and why), stray files, a job's lock."""

    out_dir: Path
    num_samples: int
    num_shards: int
    complete: list[int] = field(default_factory=list)
    complete_samples: int = 0
    missing: list[int] = field(default_factory=list)
    corrupt: dict[int, str] = field(default_factory=dict)
    stray: list[str] = field(default_factory=list)
    in_use: str | None = None

    @property
    def ok(self) -> bool:
        return not self.missing and not self.corrupt and not self.stray

    def describe(self) -> str:
        done = f"{len(self.complete)}/{counted(self.num_shards, 'shard')} complete"
        lines = [f"{self.out_dir}: {done} ({self.complete_samples} of {counted(self.num_samples, 'sample')})"]
        if self.in_use is not None:
            lines.append(f"note: {self.in_use} (its lock file is there): the directory may be changing")
        if self.missing:
            lines.append(f"missing shards: {shard_list(self.missing)}")
        lines.extend(f"corrupt shard {shard_file(s)}: {why}" for s, why in sorted(self.corrupt.items()))
        if self.stray:
            lines.append(f"stray files, not part of the run: {', '.join(self.stray)}")
        foreign = [name for name in self.stray if parse_shard_name(name) is None and not name.endswith(TEMP_SUFFIX)]
        hints = []
        if self.missing or self.corrupt or len(foreign) < len(self.stray):
            hints.append("rerun the same generation command (it redoes these shards and removes stray shard files)")
        if foreign:
            hints.append(f"move {', '.join(foreign)} out of the directory")
        lines.append("OK" if self.ok else f"FAILED: {'; '.join(hints)}")
        return "\n".join(lines)


def shard_list(shard_ids: list[int]) -> str:
    """Shard file names, runs of consecutive shards as ``shard-00003.npz..shard-00090.npz (88)``."""
    runs: list[list[int]] = []
    for shard_id in shard_ids:
        if runs and shard_id == runs[-1][1] + 1:
            runs[-1][1] = shard_id
        else:
            runs.append([shard_id, shard_id])
    return ", ".join(
        shard_file(a)
        if a == b
        else f"{shard_file(a)}..{shard_file(b)} ({b - a + 1})"
        if b > a + 1
        else f"{shard_file(a)}, {shard_file(b)}"
        for a, b in runs
    )


def _inspect(directory: Path, keep: bool) -> tuple[VerifyReport, dict[int, dict[str, np.ndarray]]]:
    """The report of ``directory`` and, with ``keep``, the arrays of its complete shards."""
    manifest = read_manifest(directory)
    config = manifest["config"]
    spans = shard_ranges(config["num_samples"], config["shard_size"])
    records = shard_records(directory, manifest)
    report = VerifyReport(directory, config["num_samples"], len(spans), stray=stray_files(directory, manifest))
    owner = read_owner(directory)
    report.in_use = describe_owner(directory, owner) if owner is not None else None
    arrays: dict[int, dict[str, np.ndarray]] = {}
    for shard_id in range(len(spans)):
        problem, shard = inspect_shard(directory, shard_id, config, records.get(shard_id))
        if problem is None and shard is not None:
            report.complete.append(shard_id)
            report.complete_samples += spans[shard_id][1] - spans[shard_id][0]
            if keep:
                arrays[shard_id] = shard
        elif problem == "missing":
            report.missing.append(shard_id)
        else:
            report.corrupt[shard_id] = problem or "unknown"
    return report, arrays


def verify_shards(out_dir: str | os.PathLike[str]) -> VerifyReport:
    """Check the manifest and every shard of an output directory, and look for files that do not belong.

    A shard is complete when its file matches the checksum recorded for it and holds its index range, the
    seeds of the manifest's seed and samples of its shape. ``ShardError`` for a damaged manifest.
    """
    return _inspect(Path(out_dir), keep=False)[0]


def load_samples(out_dir: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """All samples of a verified directory in index order: arrays ``indices``, ``seeds``, ``samples`` (and ``labels``).

    Raises :class:`ShardError` (with the report) if any shard is missing or corrupt, or a file is stray.
    The arrays are those of the bytes that were verified.
    """
    report, parts = _inspect(Path(out_dir), keep=True)
    if not report.ok:
        raise ShardError(report.describe().replace("\n", "; "))
    names = (
        ("indices", "seeds", "samples", "labels")
        if "labels" in parts[report.complete[0]]
        else ("indices", "seeds", "samples")
    )
    merged = {name: np.concatenate([parts[s][name] for s in report.complete]) for name in names}
    if not np.array_equal(merged["indices"], np.arange(report.num_samples)):
        raise ShardError(f"{report.out_dir}: the shards do not hold each index 0..{report.num_samples - 1} once")
    return merged


def merge_shards(out_dir: str | os.PathLike[str], output: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Verify ``out_dir`` and write all its samples, in index order, to one ``.npz`` at ``output`` (atomic).

    :class:`OutputExistsError` when ``output`` exists (unless ``overwrite``; the file is taken atomically, so
    of two concurrent merges to one new file exactly one writes it), ``ShardError`` when its folder does not
    exist or cannot be written (nothing partial is left), and as :func:`load_samples`.
    """
    target = check_output_file(output, overwrite)
    write_output_file(target, npz_bytes(load_samples(out_dir)), overwrite)
    return target


def check_output_file(output: str | os.PathLike[str], overwrite: bool) -> Path:
    """``output`` as a ``Path`` when a merged file may be written there: :class:`OutputExistsError` when it exists
    (unless ``overwrite``), ``ShardError`` when it is a folder or its folder does not exist."""
    target = Path(output)
    if target.is_dir():
        raise ShardError(f"{str(target)!r} is a folder; give the name of the .npz file to write")
    if os.path.lexists(target) and not overwrite:
        raise OutputExistsError(target)
    if not target.parent.is_dir():
        raise ShardError(f"cannot write {str(target)!r}: folder {str(target.parent)!r} does not exist")
    return target


def write_output_file(target: Path, data: bytes, overwrite: bool) -> None:
    """Write a merged file: replaced atomically with ``overwrite``, else taken exclusively (of two concurrent
    merges to one new file exactly one writes it; :class:`OutputExistsError` for the other)."""
    if overwrite:
        write_file(target, data)
        return
    try:
        with writing(target):
            write_bytes_exclusively(target, data)
    except FileExistsError:
        raise OutputExistsError(target) from None
