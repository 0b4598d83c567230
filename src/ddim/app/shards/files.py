"""The files of a shard directory: ``.npz`` and JSON bytes, checksums, writing, the manifest and the shard records."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ddim.app.atomic import TEMP_SUFFIX, write_bytes_atomically
from ddim.app.seeding import sample_seeds
from ddim.app.shards.layout import (
    IMAGES_NAME,
    LOCK_NAME,
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    MAX_RECORD_BYTES,
    ShardError,
    parse_shard_name,
    shard_file,
    shard_ranges,
)
from ddim.app.shards.schema import check_manifest, record_problem
from ddim.app.shards.statistics import content_problem
from ddim.file_input import UnreadableFileError, file_kind, open_regular_file, read_descriptor, read_json_file

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


_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def read_npz(data: bytes) -> dict[str, np.ndarray]:
    """The arrays of an uncompressed ``.npz`` held in ``data`` (never unpickles, never allocates beyond ``data``).

    ``ValueError`` for a member that is compressed, a ``.npy`` header that is not a plain array, or one that
    declares more bytes than the member holds (a tampered header would otherwise allocate its shape).
    """
    arrays = {}
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy"):
                raise ValueError(f"member {info.filename!r} is not an uncompressed .npy array")
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                read_header = _HEADER_READERS.get(version)
                if read_header is None:
                    raise ValueError(f"member {info.filename!r} is a .npy of version {version}, not 1.0 or 2.0")
                shape, _, dtype = read_header(member)
                if dtype.hasobject or int(np.prod(shape, dtype=object)) * dtype.itemsize > info.file_size:
                    raise ValueError(f"member {info.filename!r} declares {shape} {dtype}, more than it holds")
            with archive.open(info) as member:
                arrays[info.filename.removesuffix(".npy")] = np.lib.format.read_array(member, allow_pickle=False)
    return arrays


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
    """The manifest of a shard directory, its structure checked; ``ShardError`` if the directory does not exist,
    has no manifest or a damaged one."""
    path = Path(out_dir) / MANIFEST_NAME
    if not Path(out_dir).exists():
        raise ShardError(f"{str(out_dir)!r} does not exist")
    if not Path(out_dir).is_dir():
        raise ShardError(f"{str(out_dir)!r} is not a directory")
    if not os.path.lexists(path):
        raise ShardError(f"{str(out_dir)!r} has no {MANIFEST_NAME}: it is not a ddim shard directory")
    try:
        manifest = read_json_file(path, MAX_MANIFEST_BYTES)
    except UnreadableFileError as error:
        raise ShardError(f"{path} cannot be read as JSON: {error}") from None
    return check_manifest(manifest, path)


def non_regular_kind(path: Path) -> str | None:
    """``"a FIFO (named pipe)"``, ``"a symbolic link"``, ... when ``path`` exists and is not a regular file, else None
    (never follows a link, never opens the file)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    return None if stat.S_ISREG(mode) else file_kind(mode)


def read_shard(path: Path, expected_bytes: int) -> bytes:
    """The bytes of the regular file ``path`` if it holds exactly ``expected_bytes`` (read no further);
    :class:`UnreadableFileError` otherwise."""
    with open_regular_file(path) as descriptor:
        size = os.fstat(descriptor).st_size
        if size != expected_bytes:
            raise UnreadableFileError(f"checksum mismatch ({size} bytes on disk, {expected_bytes} recorded)")
        return read_descriptor(descriptor, expected_bytes, path)


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
            record = read_json_file(out_dir / name, MAX_RECORD_BYTES)
            if record_problem(record, shard_id, spans[shard_id]) is not None:
                continue
            data = read_shard(out_dir / shard_file(shard_id), record["bytes"])
        except UnreadableFileError:
            continue  # a half-written record cannot exist (atomic writes): not ours, or its shard is gone
        if checksum_matches(data, record):
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
    kind = non_regular_kind(path)
    if kind is not None:
        return f"is {kind}, not a shard file", None
    if not path.exists():
        return "missing", None
    if record is None:
        return "no checksum recorded (the run writing it did not finish it)", None
    try:
        data = read_shard(path, record["bytes"])
    except UnreadableFileError as error:
        return str(error), None
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
        if name == MANIFEST_NAME or (name == LOCK_NAME and non_regular_kind(out_dir / name) is None):
            continue
        if name == IMAGES_NAME and non_regular_kind(out_dir / name) == "a folder":
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
