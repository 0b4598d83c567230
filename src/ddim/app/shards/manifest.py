"""The manifest of a run: what identifies it (model, scheduler, settings), and preparing and closing a directory."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from ddim.app.seeding import SEED_RULE
from ddim.app.shards import files
from ddim.app.shards.layout import FORMAT, LOCK_NAME, MANIFEST_NAME, ShardError, shard_file, shard_ranges
from ddim.app.shards.lock import JobLock, acquire_lock
from ddim.config import json_value
from ddim.model import Model
from ddim.scheduler_protocol import DDIMSchedulerLike


# --------------------------------------------------------------------------- configuration identity
def model_description(model: Model, model_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """What identifies the model in a manifest: its class, the SHA-256 of its state (a Module) and ``model_info``."""
    kind = type(model)
    described: dict[str, Any] = {"class": f"{kind.__module__}.{kind.__qualname__}"}
    if isinstance(model, torch.nn.Module):
        digest = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            flat = tensor.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes())
        described["state_sha256"] = digest.hexdigest()
    described.update(model_info or {})
    return json_value(described)


def run_identity(
    model: dict[str, Any],
    scheduler: DDIMSchedulerLike,
    num_samples: int,
    sample_shape: tuple[int, ...],
    seed: int,
    num_inference_steps: int,
    eta: float,
    micro_batch: int,
    shard_size: int,
    dtype: torch.dtype,
    device_type: str,
    png: bool,
) -> dict[str, Any]:
    """Everything a sample's bits depend on; a resume must match it exactly (JSON-normalised)."""
    identity = {
        "num_samples": num_samples,
        "sample_shape": list(sample_shape),
        "seed": seed,
        "seed_rule": SEED_RULE,
        "num_inference_steps": num_inference_steps,
        "timesteps": [int(t) for t in scheduler.timesteps.tolist()],
        "eta": eta,
        "micro_batch": micro_batch,
        "shard_size": shard_size,
        "dtype": str(dtype).removeprefix("torch."),
        "device_type": device_type,
        "png": png,
        "model": model,
        "scheduler": {
            "class": type(scheduler).__name__,
            "config": {k: json_value(v) for k, v in scheduler.config.items() if not str(k).startswith("_")},
        },
    }
    normalised: dict[str, Any] = json.loads(json.dumps(identity, sort_keys=True))
    return normalised


#: A list longer than this is shown in a difference as its length, its first two and its last value.
LONG_LIST = 8


def config_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """One phrase per key whose value differs between a manifest's config and this run's.

    ``KEY: manifest has A, this run has B`` with the values in full; for a nested dict (the model, the
    scheduler) only its differing fields; a long list (the timesteps) as ``50 values [981, 961, ..., 1]``.
    """
    return [
        f"{key}: manifest has {shown}, this run has {other}"
        for key in sorted(set(recorded) | set(current))
        if recorded.get(key) != current.get(key)
        for shown, other in [difference_values(recorded.get(key), current.get(key))]
    ]


def difference_values(recorded: Any, current: Any) -> tuple[str, str]:
    """The two values of a differing key as a difference shows them (see :func:`config_differences`)."""
    recorded, current = differing_fields(recorded, current)
    shown, other = (json.dumps(value, sort_keys=True) for value in (recorded, current))
    if isinstance(recorded, list) and isinstance(current, list):
        short, short_other = (list_summary(value) for value in (recorded, current))
        if short != short_other:
            return short, short_other
    return shown, other


def differing_fields(recorded: Any, current: Any) -> tuple[Any, Any]:
    """Two dicts reduced, at every depth, to the fields whose values differ; other values as they are."""
    if not (isinstance(recorded, dict) and isinstance(current, dict)):
        return recorded, current
    kept: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
    for name in sorted(set(recorded) | set(current)):
        if recorded.get(name) != current.get(name):
            pair = differing_fields(recorded.get(name), current.get(name))
            for side, values, value in zip((recorded, current), kept, pair, strict=True):
                if name in side:
                    values[name] = value
    return kept


def list_summary(values: list[Any]) -> str:
    """A list in a difference: in full up to ``LONG_LIST`` values, else ``N values [a, b, ..., z]``."""
    if len(values) <= LONG_LIST:
        return json.dumps(values, sort_keys=True)
    first, second, last = (json.dumps(value, sort_keys=True) for value in (values[0], values[1], values[-1]))
    return f"{len(values)} values [{first}, {second}, ..., {last}]"


# --------------------------------------------------------------------------- directory preparation (rank 0)
def prepare_directory(
    out_dir: Path, identity: dict[str, Any], world_size: int, log: Callable[[str], None] | None = None
) -> tuple[JobLock, list[int]]:
    """Create or check ``out_dir``, lock it, keep its complete shards, clear the rest.

    Returns the lock (held until the caller releases it) and the shards to generate. Refuses
    (``ShardError``, nothing touched) a path that is not a folder, a non-empty folder without a
    manifest, a folder that cannot be written, one locked by a running job, a damaged manifest and a
    manifest of another configuration. ``log`` gets one line per note (a stale lock taken over, strays).
    A folder with a lock is checked for foreign files only once its lock is ours: its job may be
    writing its first manifest, and a live job is reported as such (``DirectoryInUseError``).
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise ShardError(f"{str(out_dir)!r} exists and is not a directory")
    if not (out_dir / LOCK_NAME).exists():
        _refuse_foreign(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        lock = acquire_lock(out_dir, log)  # creating the lock file also shows that the folder can be written
    except OSError as error:
        raise ShardError(f"{str(out_dir)!r} cannot be written: {error.strerror or error}") from error
    try:
        return lock, _prepare_locked(out_dir, identity, world_size, log)
    except BaseException:
        lock.release()
        raise


def _refuse_foreign(out_dir: Path) -> None:
    """``ShardError`` for a non-empty folder without a manifest (its lock aside): not ours to write into."""
    if out_dir.is_dir() and not (out_dir / MANIFEST_NAME).exists() and set(os.listdir(out_dir)) - {LOCK_NAME}:
        raise ShardError(
            f"{str(out_dir)!r} is not empty and holds no {MANIFEST_NAME}: refusing to write into a "
            "directory this tool did not create; choose a new or empty directory"
        )


def _prepare_locked(
    out_dir: Path, identity: dict[str, Any], world_size: int, log: Callable[[str], None] | None
) -> list[int]:
    """:func:`prepare_directory` once the lock is held."""
    manifest: dict[str, Any] = {"format": FORMAT, "config": identity, "shards": {}, "runs": []}
    if (out_dir / MANIFEST_NAME).exists():
        manifest = files.read_manifest(out_dir)
        differences = config_differences(manifest["config"], identity)
        if differences:
            raise ShardError(
                f"{str(out_dir)!r} holds samples of another configuration ({'; '.join(differences)}); "
                "refusing to mix outputs: use a new output directory, or rerun with the recorded settings"
            )
    _refuse_foreign(out_dir)
    spans = shard_ranges(identity["num_samples"], identity["shard_size"])
    for shard_id in range(len(spans)):
        if (out_dir / shard_file(shard_id)).is_dir():
            raise ShardError(f"{out_dir / shard_file(shard_id)} is a folder where a shard belongs; move it away")
    kept = files.clear_leftovers(out_dir, manifest)
    if kept and log is not None:
        log(f"note: {out_dir} holds files that are not part of the run, left untouched: {', '.join(kept)}")
    records = files.shard_records(out_dir, manifest)
    complete: dict[str, Any] = {}
    for shard_id in range(len(spans)):
        record = records.get(shard_id)
        problem, _ = files.inspect_shard(out_dir, shard_id, identity, record)
        if problem is None and record is not None:
            complete[str(shard_id)] = record
        else:
            with contextlib.suppress(FileNotFoundError):
                (out_dir / shard_file(shard_id)).unlink()
    manifest["shards"] = complete
    manifest["complete"] = len(complete) == len(spans)
    manifest["runs"].append({"started": datetime.now(UTC).isoformat(timespec="seconds"), "world_size": world_size})
    store_manifest(out_dir, manifest)
    return [shard_id for shard_id in range(len(spans)) if str(shard_id) not in complete]


def finalize_manifest(out_dir: Path) -> dict[str, Any]:
    """Fold the per-shard records into the manifest (rank 0, after every rank is done)."""
    manifest = files.read_manifest(out_dir)
    records = files.shard_records(out_dir, manifest)
    total = len(shard_ranges(manifest["config"]["num_samples"], manifest["config"]["shard_size"]))
    manifest["shards"] = {str(k): records[k] for k in sorted(records)}
    manifest["complete"] = len(manifest["shards"]) == total
    store_manifest(out_dir, manifest)
    return manifest


def store_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest (atomically), then drop the per-shard records (it holds those that were complete)."""
    files.write_file(out_dir / MANIFEST_NAME, files.json_bytes(manifest))
    files.drop_records(out_dir)
