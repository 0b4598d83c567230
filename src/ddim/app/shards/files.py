"""The files of a shard directory: ``.npz`` and JSON bytes, checksums, the manifest and the shard records."""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ddim.app.shards.layout import FORMAT, MANIFEST_NAME, shard_file
from ddim.validation import ArgumentValueError


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


def read_manifest(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a shard directory; ``ValueError`` if it has none or it is not one of ours."""
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ArgumentValueError(f"out_dir={str(out_dir)!r} has no {MANIFEST_NAME}: it is not a ddim shard directory")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ArgumentValueError(f"{path} cannot be read as JSON: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArgumentValueError(f"{path} is not a ddim shard manifest (expected format {FORMAT!r})")
    return manifest


def shard_records(out_dir: Path, manifest: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Recorded shards: the manifest's entries, overridden by the per-shard records written since."""
    records = {int(key): value for key, value in manifest.get("shards", {}).items()}
    for path in out_dir.glob("shard-*.json"):
        try:
            record = json.loads(path.read_text())
            records[int(record["shard"])] = record
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a half-written record cannot exist (atomic writes); anything else is not ours
    return records


def shard_problem(out_dir: Path, shard_id: int, span: tuple[int, int], record: dict[str, Any] | None) -> str | None:
    """Why shard ``shard_id`` is not complete (missing, checksum or content mismatch), or None if it is."""
    path = out_dir / shard_file(shard_id)
    if not path.is_file():
        return "missing"
    if record is None:
        return "no checksum recorded (the run writing it did not finish it)"
    data = path.read_bytes()
    if len(data) != record.get("bytes") or sha256_hex(data) != record.get("sha256"):
        return f"checksum mismatch ({len(data)} bytes on disk, {record.get('bytes')} recorded)"
    try:
        arrays = read_npz(data)
    except (ValueError, OSError, zipfile.BadZipFile) as error:
        return f"unreadable: {error}"
    indices = arrays.get("indices")
    if indices is None or not np.array_equal(indices, np.arange(*span)):
        return f"does not hold the indices [{span[0]}, {span[1]})"
    if arrays.get("samples") is None or arrays["samples"].shape[0] != span[1] - span[0]:
        return "samples missing or of the wrong length"
    return None
