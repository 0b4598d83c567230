"""Merging the feature statistics of every shard of a directory, without loading any sample.

Each shard is checked against the manifest's record by streaming its bytes through SHA-256 (in
``CHUNK_BYTES`` pieces), then only its statistics arrays are read from the ``.npz`` and added up, so
memory does not grow with the number of samples or shards.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ddim.app.shards.conditioning import conditioning_from_config
from ddim.app.shards.files import read_manifest, shard_records
from ddim.app.shards.layout import ShardError, shard_file, shard_ranges
from ddim.app.shards.statistics import (
    CLASS_NAMES,
    OVERALL_NAMES,
    SufficientStatistics,
    class_statistics,
    feature_extractor,
    overall_statistics,
    statistics_shape_problem,
)
from ddim.file_input import UnreadableFileError, open_regular_file

#: Bytes read at a time while checksumming a shard.
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class MergedStatistics:
    """The statistics of all samples of a run, and per label (conditional runs; labels with samples only)."""

    overall: SufficientStatistics
    per_label: dict[int, SufficientStatistics]
    num_shards: int


def streamed_sha256(path: Path, size: int) -> str:
    """SHA-256 of the regular file ``path`` (:func:`ddim.file_input.open_regular_file`: no link, FIFO or device),
    read in chunks and never past ``size`` + 1 bytes; ``ShardError`` unless it has exactly ``size`` bytes."""
    try:
        with open_regular_file(path) as descriptor:
            on_disk = os.fstat(descriptor).st_size
            digest, total = hashlib.sha256(), 0
            while on_disk == size and total <= size:
                chunk = os.pread(descriptor, min(CHUNK_BYTES, size + 1 - total), total)
                if not chunk:
                    break
                digest.update(chunk)
                total += len(chunk)
    except UnreadableFileError as error:
        raise ShardError(f"{error}; run `ddim verify`") from None
    if on_disk != size or total != size:
        raise ShardError(f"{path}: {max(on_disk, total)} bytes on disk, {size} recorded; run `ddim verify`")
    return digest.hexdigest()


def merge_statistics(out_dir: str | os.PathLike[str]) -> MergedStatistics:
    """Add up the statistics of every shard of a complete directory written with feature statistics.

    ``ShardError`` when the run has no statistics (``--fid-stats``), a shard is missing, does not match its
    recorded checksum, or its statistics are malformed or do not count its samples.
    """
    directory = Path(out_dir)
    manifest = read_manifest(directory)
    config = manifest["config"]
    if "fid_stats" not in config:
        raise ShardError(f"{directory} was generated without feature statistics (rerun with --fid-stats)")
    dim = feature_extractor(config["fid_stats"]).describe()["feature_dim"]
    conditioning = conditioning_from_config(config)
    num_labels = conditioning.num_labels if conditioning is not None else None
    spans = shard_ranges(config["num_samples"], config["shard_size"])
    records = shard_records(directory, manifest)
    overall: SufficientStatistics | None = None
    per_label: dict[int, SufficientStatistics] = {}
    for shard_id, (start, stop) in enumerate(spans):
        path = directory / shard_file(shard_id)
        record = records.get(shard_id)
        if record is None or not path.exists():
            raise ShardError(f"{path} is missing or unfinished; run `ddim verify {directory}`")
        if streamed_sha256(path, record["bytes"]) != record["sha256"]:
            raise ShardError(f"{path} does not match its recorded SHA-256; run `ddim verify {directory}`")
        names = OVERALL_NAMES + (CLASS_NAMES if num_labels is not None else ())
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in names if name in archive.files}
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            raise ShardError(f"{path} cannot be read: {error}") from error
        problem = statistics_shape_problem(arrays, stop - start, dim, num_labels)
        if problem is not None:
            raise ShardError(f"{path}: {problem}")
        shard = overall_statistics(arrays)
        overall = shard if overall is None else overall + shard
        for label in range(num_labels or 0):
            part = class_statistics(arrays, label)
            if part.count:
                per_label[label] = per_label[label] + part if label in per_label else part
    if overall is None:  # pragma: no cover - a layout has at least one shard
        raise ShardError(f"{directory} holds no shards")
    return MergedStatistics(overall, per_label, len(spans))
