"""The files of a shard directory: ``.npz`` and JSON bytes, checksums, writing, the manifest and the shard records."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ddim.app.seeding import sample_seeds
from ddim.app.shards.layout import (
    IMAGES_NAME,
    LOCK_NAME,
    MANIFEST_NAME,
    ShardError,
    parse_shard_name,
    shard_file,
    shard_ranges,
)
from ddim.app.shards.schema import check_manifest, record_problem
from ddim.app.shards.statistics import content_problem
from ddim.atomic import TEMP_SUFFIX, write_bytes_atomically

#: Write errors that are the environment's, not a bug: reported as one line (:func:`write_file`).
WRITE_ERRORS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An uncompressed ``.npz`` (readable by ``numpy.load``) whose bytes depend on the arrays only (no dates)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def read_npz(data: bytes) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` held in ``data`` (never unpickles)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def json_bytes(value: Any) -> bytes:
    """``value`` as indented JSON with sorted keys and a final newline."""
    return (json.dumps(value, indent=1, sort_keys=True) + "\n").encode()


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """A full disk, a too-large file, a read-only or forbidden folder as ``ShardError("cannot write PATH: ...")``."""
    try:
        yield
    except OSError as error:
        if error.errno not in WRITE_ERRORS:
            raise
        raise ShardError(f"cannot write {path}: {error.strerror or error}") from error


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (nothing partial is left when it fails); see :func:`writing`."""
    with writing(path):
        write_bytes_atomically(path, data)


def read_manifest(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a shard directory, its structure checked; ``ShardError`` if it has none or it is damaged."""
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ShardError(f"{str(out_dir)!r} has no {MANIFEST_NAME}: it is not a ddim shard directory")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ShardError(f"{path} cannot be read as JSON: {error}") from error
    return check_manifest(manifest, path)


def shard_records(out_dir: Path, manifest: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Recorded shards: the manifest's entries, plus the per-shard records of the shards it does not list.

    A record never overrides the manifest; one is taken only when it is well formed and its shard file
    matches its size and checksum (records are written by the ranks of a run, and folded in at its end).
    """
    config = manifest["config"]
    spans = shard_ranges(config["num_samples"], config["shard_size"])
    records = {int(key): value for key, value in manifest["shards"].items()}
    for name in sorted(os.listdir(out_dir)):
        parsed = parse_shard_name(name)
        if parsed is None or parsed[1] != "json" or parsed[0] in records or parsed[0] >= len(spans):
            continue
        shard_id = parsed[0]
        try:
            record = json.loads((out_dir / name).read_text())
            data = (out_dir / shard_file(shard_id)).read_bytes()
        except (OSError, ValueError):
            continue  # a half-written record cannot exist (atomic writes): not ours, or its shard is gone
        if record_problem(record, shard_id, spans[shard_id]) is None and checksum_matches(data, record):
            records[shard_id] = record
    return records


def checksum_matches(data: bytes, record: dict[str, Any]) -> bool:
    return len(data) == record.get("bytes") and sha256_hex(data) == record.get("sha256")


def inspect_shard(
    out_dir: Path, shard_id: int, config: dict[str, Any], record: dict[str, Any] | None
) -> tuple[str | None, dict[str, np.ndarray] | None]:
    """``(why shard_id is not complete, None)``, or ``(None, its arrays)`` when it is.

    Complete means: a file matching its record's size and SHA-256, whose ``indices`` are its range of the
    layout, whose ``seeds`` follow the seed rule for the manifest's seed, and whose ``samples`` have the
    manifest's shape. The reason is ``"missing"`` when there is no file.
    """
    span = shard_ranges(config["num_samples"], config["shard_size"])[shard_id]
    path = out_dir / shard_file(shard_id)
    if path.is_dir():
        return "is a folder, not a shard file", None
    if not path.is_file():
        return "missing", None
    if record is None:
        return "no checksum recorded (the run writing it did not finish it)", None
    data = path.read_bytes()
    if not checksum_matches(data, record):
        return f"checksum mismatch ({len(data)} bytes on disk, {record.get('bytes')} recorded)", None
    try:
        arrays = read_npz(data)
    except (ValueError, OSError, zipfile.BadZipFile) as error:
        return f"unreadable: {error}", None
    indices = arrays.get("indices")
    if indices is None or not np.array_equal(indices, np.arange(*span)):
        return f"does not hold the indices [{span[0]}, {span[1]})", None
    seeds = arrays.get("seeds")
    if seeds is None or not np.array_equal(seeds, sample_seeds(config["seed"], indices)):
        return f"its seeds are not those of seed {config['seed']} (another run's shard?)", None
    samples = arrays.get("samples")
    if samples is None or samples.shape != (span[1] - span[0], *config["sample_shape"]):
        return f"samples missing or not of shape {(span[1] - span[0], *config['sample_shape'])}", None
    problem = content_problem(arrays, config)  # labels (conditional runs) and feature statistics (--fid-stats)
    return (problem, None) if problem is not None else (None, arrays)


def stray_files(out_dir: Path, manifest: dict[str, Any]) -> list[str]:
    """The names in ``out_dir`` that are not part of its layout: not the manifest, the lock, ``images/``, a shard
    of the layout, or the record of a shard the manifest does not list yet (temporaries of a killed run are stray)."""
    config = manifest["config"]
    count = len(shard_ranges(config["num_samples"], config["shard_size"]))
    stray = []
    for name in sorted(os.listdir(out_dir)):
        parsed = parse_shard_name(name)
        if name in (MANIFEST_NAME, LOCK_NAME) or (name == IMAGES_NAME and (out_dir / name).is_dir()):
            continue
        if (
            parsed is not None
            and parsed[0] < count
            and (parsed[1] == "npz" or str(parsed[0]) not in manifest["shards"])
        ):
            continue
        stray.append(name)
    return stray


def clear_leftovers(out_dir: Path, manifest: dict[str, Any]) -> list[str]:
    """Remove what a killed or other run left in ``out_dir`` (temporaries; shards and records outside the layout);
    return the names of the other stray files, left untouched (not ours to delete)."""
    for temp in [*out_dir.glob(f".*{TEMP_SUFFIX}"), *out_dir.glob(f"{IMAGES_NAME}/.*{TEMP_SUFFIX}")]:
        temp.unlink()
    kept = []
    for name in stray_files(out_dir, manifest):
        if parse_shard_name(name) is not None and not (out_dir / name).is_dir():
            (out_dir / name).unlink()
        else:
            kept.append(name)
    return kept


def drop_records(out_dir: Path) -> None:
    """Remove every per-shard record (once the manifest holds those of complete shards)."""
    for name in os.listdir(out_dir):
        parsed = parse_shard_name(name)
        if parsed is not None and parsed[1] == "json" and not (out_dir / name).is_dir():
            (out_dir / name).unlink()
