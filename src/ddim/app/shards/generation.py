"""Sharded, resumable sample generation on one process or many (``torchrun``, torch.distributed).

Sample ``i`` of a run depends on ``(seed, i)`` alone, so the set of samples is the same, bit for bit on
one device type, whatever the number of processes K and the batch size:

- its seed is :func:`ddim.app.seeding.sample_seeds` of (seed, i) (the rule of ``ddim sample``), and a CPU
  ``torch.Generator`` with that seed draws its x_T and every step's noise (``ddim.sample`` with a list
  of per-row generators);
- the model is always called on micro-batches of exactly ``micro_batch`` rows holding the indices
  ``[k * micro_batch, (k + 1) * micro_batch)`` (the last one padded with zero rows), because CPU and GPU
  kernels pick their algorithm by batch size: on the CPU this was written on, a convolution or a linear
  layer gives other bits for a row in a batch of 1, of 2-3 and of 4 or more rows.

An output directory holds ``manifest.json`` (the configuration that identifies the run, and the
SHA-256 of every complete shard), the shards ``shard-00000.npz`` ... (arrays ``indices``, ``seeds``,
``samples``; shard ``s`` holds the indices ``[s * shard_size, (s + 1) * shard_size)``), and, while a
run is going, one ``shard-00000.json`` record per shard finished (folded into the manifest by rank 0).
Every file is written atomically: temporary name, fsync, rename. Shards are the unit of work and of
resume: complete shards are skipped, the others are redone and dealt round-robin to the ranks.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import sys
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ddim.app.seeding import SEED_RULE, sample_generators, sample_seeds
from ddim.atomic import write_atomically
from ddim.config import json_value
from ddim.sampling import Model, sample
from ddim.scheduler import DDIMStepping, check_eta

MANIFEST_NAME = "manifest.json"
FORMAT = "ddim-shards/1"
TEMP_SUFFIX = ".tmp"
SAMPLE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: How often (seconds) rank 0 looks at the records of the other ranks once its own shards are done.
POLL_SECONDS = 0.2


class ShardError(ValueError):
    """An output directory whose shards fail verification (missing or corrupt)."""


# --------------------------------------------------------------------------- partitioning
def shard_ranges(num_samples: int, shard_size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of every shard: shard s holds ``[s * shard_size, min((s + 1) * shard_size, N))``."""
    check_count("num_samples", num_samples)
    check_count("shard_size", shard_size)
    return [(start, min(start + shard_size, num_samples)) for start in range(0, num_samples, shard_size)]


def rank_shards(shard_ids: Sequence[int], rank: int, world_size: int) -> list[int]:
    """The shards of ``rank``: every ``world_size``-th of ``shard_ids`` from position ``rank`` (disjoint)."""
    check_count("world_size", world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} is out of range; allowed 0..{world_size - 1} (world_size={world_size})")
    return list(shard_ids[rank::world_size])


def shard_file(shard_id: int) -> str:
    return f"shard-{shard_id:05d}.npz"


def record_file(shard_id: int) -> str:
    return f"shard-{shard_id:05d}.json"


def check_count(name: str, value: object, minimum: int = 1) -> int:
    """``value`` as an int after checking it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name}={value} is out of range; it must be >= {minimum}")
    return int(value)


# --------------------------------------------------------------------------- fixed micro-batches
class FixedBatchModel:
    """``model`` called on micro-batches of exactly ``micro_batch`` rows (the last one padded with zeros).

    Row ``r`` of a batch lands in micro-batch ``r // micro_batch``; when batches start at multiples of
    ``micro_batch`` (as the shards and batches of :func:`generate_shards` do), a sample meets the model
    in the same micro-batch whatever the batch size, so its output does not depend on it.
    """

    def __init__(self, model: Model, micro_batch: int) -> None:
        self.model = model
        self.micro_batch = check_count("micro_batch", micro_batch)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        size = self.micro_batch
        outputs = []
        for start in range(0, x.shape[0], size):
            chunk, steps = x[start : start + size], t[start : start + size]
            rows = chunk.shape[0]
            if rows < size:
                chunk = torch.cat([chunk, chunk.new_zeros((size - rows, *chunk.shape[1:]))])
                steps = torch.cat([steps, steps[-1:].expand(size - rows)])
            outputs.append(self.model(chunk, steps)[:rows])
        return torch.cat(outputs)


# --------------------------------------------------------------------------- files
def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``: temporary name in the same folder, fsync, rename, fsync of the folder."""

    def write(temp: Path) -> None:
        with open(temp, "wb") as handle:
            os.fchmod(handle.fileno(), file_mode())
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    write_atomically(path, write)
    descriptor = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@functools.cache
def file_mode() -> int:
    """0o666 less the umask: the mode of the files written (``ddim.atomic``'s temporary files are 0o600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


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
    return (json.dumps(value, indent=1, sort_keys=True) + "\n").encode()


def read_manifest(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a shard directory; ``ValueError`` if it has none or it is not one of ours."""
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ValueError(f"out_dir={str(out_dir)!r} has no {MANIFEST_NAME}: it is not a ddim shard directory")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} cannot be read as JSON: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a ddim shard manifest (expected format {FORMAT!r})")
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


# --------------------------------------------------------------------------- verify and merge
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
        raise ValueError(f"output={str(target)!r} exists; pass overwrite=True (CLI: --force) to replace it")
    if not target.parent.is_dir():
        raise ValueError(f"output={str(target)!r}: folder {str(target.parent)!r} does not exist")
    write_atomic(target, npz_bytes(load_samples(out_dir)))
    return target


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
    scheduler: DDIMStepping,
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


def config_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """One line per key whose value differs between a manifest's config and this run's."""

    def short(value: Any) -> str:
        text = json.dumps(value, sort_keys=True)
        return text if len(text) <= 80 else text[:77] + "..."

    return [
        f"{key}: manifest has {short(recorded.get(key))}, this run has {short(current.get(key))}"
        for key in sorted(set(recorded) | set(current))
        if recorded.get(key) != current.get(key)
    ]


# --------------------------------------------------------------------------- directory preparation (rank 0)
def prepare_directory(out_dir: Path, identity: dict[str, Any], world_size: int) -> list[int]:
    """Create or check ``out_dir``, keep its complete shards, clear the rest; return the shards to generate.

    Refuses (``ValueError``, nothing touched) a path that is not a folder, a non-empty folder without a
    manifest, a manifest of another configuration, and a folder that cannot be written.
    """
    spans = shard_ranges(identity["num_samples"], identity["shard_size"])
    manifest: dict[str, Any] = {"format": FORMAT, "config": identity, "shards": {}, "runs": []}
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out_dir={str(out_dir)!r} exists and is not a directory")
    if (out_dir / MANIFEST_NAME).exists():
        manifest = read_manifest(out_dir)
        differences = config_differences(manifest["config"], identity)
        if differences:
            raise ValueError(
                f"out_dir={str(out_dir)!r} holds samples of another configuration ({'; '.join(differences)}); "
                "refusing to mix outputs: use a new output directory, or rerun with the recorded settings"
            )
    elif out_dir.is_dir() and any(out_dir.iterdir()):
        raise ValueError(
            f"out_dir={str(out_dir)!r} is not empty and holds no {MANIFEST_NAME}: refusing to write into a "
            "directory this tool did not create; choose a new or empty directory"
        )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-probe.{os.getpid()}{TEMP_SUFFIX}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ValueError(f"out_dir={str(out_dir)!r} cannot be written: {error.strerror or error}") from error
    for temp in [*out_dir.glob(f".*{TEMP_SUFFIX}"), *out_dir.glob(f"images/.*{TEMP_SUFFIX}")]:
        temp.unlink()  # left by a killed run
    records = shard_records(out_dir, manifest)
    complete: dict[str, Any] = {}
    for shard_id, span in enumerate(spans):
        record = records.get(shard_id)
        if shard_problem(out_dir, shard_id, span, record) is None and record is not None:
            complete[str(shard_id)] = record
        else:
            with contextlib.suppress(FileNotFoundError):
                (out_dir / shard_file(shard_id)).unlink()
    manifest["shards"] = complete
    manifest["complete"] = len(complete) == len(spans)
    manifest["runs"].append(
        {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "world_size": world_size}
    )
    store_manifest(out_dir, manifest)
    return [shard_id for shard_id in range(len(spans)) if str(shard_id) not in complete]


def finalize_manifest(out_dir: Path) -> dict[str, Any]:
    """Fold the per-shard records into the manifest (rank 0, after every rank is done)."""
    manifest = read_manifest(out_dir)
    records = shard_records(out_dir, manifest)
    total = len(shard_ranges(manifest["config"]["num_samples"], manifest["config"]["shard_size"]))
    manifest["shards"] = {str(k): records[k] for k in sorted(records) if k < total}
    manifest["complete"] = len(manifest["shards"]) == total
    store_manifest(out_dir, manifest)
    return manifest


def store_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest (atomically), then drop the per-shard records it now holds."""
    write_atomic(out_dir / MANIFEST_NAME, json_bytes(manifest))
    for record_path in out_dir.glob("shard-*.json"):
        record_path.unlink()


# --------------------------------------------------------------------------- processes
@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in the job: rank, world size, local rank, and whether we created the group."""

    rank: int
    world_size: int
    local_rank: int
    created: bool

    def share(self, value: Any) -> Any:
        """``value`` of rank 0, on every rank."""
        if self.world_size == 1:
            return value
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def join_process_group() -> ProcessGroup:
    """The process group set up by the caller, or one made from torchrun's variables (gloo), or a single process."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return ProcessGroup(dist.get_rank(), dist.get_world_size(), local_rank, created=False)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return ProcessGroup(0, 1, 0, created=False)
    dist.init_process_group(backend="gloo")
    return ProcessGroup(dist.get_rank(), dist.get_world_size(), local_rank, created=True)


def rank_device(device: str | torch.device | None, local_rank: int) -> torch.device:
    """The device of this rank: ``cuda`` (or None with CUDA available) means ``cuda:LOCAL_RANK``."""
    chosen = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if chosen.type != "cuda":
        return chosen
    if not torch.cuda.is_available():
        raise ValueError(f"device={str(chosen)!r} was asked for but CUDA is not available; use device='cpu'")
    if chosen.index is None:
        chosen = torch.device("cuda", local_rank)
    if chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise ValueError(
            f"device={str(chosen)!r} does not exist: {torch.cuda.device_count()} CUDA device(s) visible "
            f"(LOCAL_RANK={local_rank}); launch at most that many processes per node"
        )
    torch.cuda.set_device(chosen)
    return chosen


# --------------------------------------------------------------------------- generation
@dataclass(frozen=True)
class GenerationSummary:
    """What a call of :func:`generate_shards` did (the same on every rank)."""

    out_dir: Path
    num_samples: int
    generated: int
    skipped: int
    seconds: float
    world_size: int

    @property
    def samples_per_second(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else float("inf")

    def describe(self) -> str:
        return (
            f"{self.generated} samples in {self.seconds:.2f} s: {self.samples_per_second:.1f} samples/s "
            f"on {self.world_size} process{'es' if self.world_size > 1 else ''} "
            f"({self.skipped} already complete, {self.num_samples} in {self.out_dir})"
        )


def generate_shards(
    model: Model,
    scheduler: DDIMStepping,
    out_dir: str | os.PathLike[str],
    num_samples: int,
    sample_shape: Sequence[int],
    *,
    seed: int = 0,
    num_inference_steps: int = 50,
    eta: float = 0.0,
    batch_size: int = 256,
    micro_batch: int = 64,
    shard_size: int = 256,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    png: bool = False,
    progress: bool = True,
    model_info: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = print,
) -> GenerationSummary:
    """Generate samples ``0 .. num_samples - 1`` into shards under ``out_dir``, resuming what is there.

    Run it in every process of a ``torchrun`` job (or in one plain process): each rank generates a
    disjoint share of the shards still to do. ``batch_size`` and ``shard_size`` must be multiples of
    ``micro_batch`` (micro-batches then sit at fixed indices). ``batch_size`` and the number of
    processes do not change the samples; everything else is recorded in the manifest and must match
    it on resume. ``png`` also writes ``images/000123.png`` per sample (samples of shape (1, H, W) or
    (3, H, W) in [-1, 1]). Rank 0 shows a tqdm bar counting the samples of all ranks and finally logs
    the throughput (``log``; None for silence). Returns the same summary on every rank.
    """
    num_samples = check_count("num_samples", num_samples)
    seed = check_count("seed", seed, minimum=0)
    sample_seeds(seed, [num_samples - 1])  # seed and indices below 2**32
    eta = check_eta(eta)
    micro_batch = check_count("micro_batch", micro_batch)
    batch_size = check_count("batch_size", batch_size)
    shard_size = check_count("shard_size", shard_size)
    shape = tuple(check_count("sample_shape", d) for d in sample_shape)
    if not shape:
        raise ValueError("sample_shape=() must hold at least one dimension (the shape of one sample)")
    if batch_size % micro_batch or shard_size % micro_batch:
        raise ValueError(
            f"batch_size={batch_size} and shard_size={shard_size} must be multiples of micro_batch={micro_batch} "
            "(so that every micro-batch the model sees holds the same sample indices in every run)"
        )
    if dtype not in SAMPLE_DTYPES.values():
        raise ValueError(f"dtype={dtype} is not supported; allowed {list(SAMPLE_DTYPES)}")
    if png and shape[0] not in (1, 3):
        raise ValueError(f"png=True needs samples of shape (1, H, W) or (3, H, W), got sample_shape={shape}")
    group = join_process_group()
    try:
        if group.world_size > num_samples:
            raise ValueError(
                f"world_size={group.world_size} is larger than num_samples={num_samples}: some processes would "
                "have nothing to do; launch at most num_samples processes"
            )
        target = rank_device(device, group.local_rank)
        scheduler.set_timesteps(num_inference_steps)
        identity = run_identity(
            model_description(model, model_info),
            scheduler,
            num_samples,
            shape,
            seed,
            num_inference_steps,
            eta,
            micro_batch,
            shard_size,
            dtype,
            target.type,
            png,
        )
        directory = Path(out_dir)
        todo = _shared_plan(group, directory, identity)
        if log is not None and group.rank == 0 and 0 < len(todo) < group.world_size:
            log(
                f"note: {len(todo)} shard(s) to generate for {group.world_size} processes, so some processes are "
                f"idle; a smaller shard_size (now {shard_size}) spreads the work"
            )
        spans = shard_ranges(num_samples, shard_size)
        skipped = num_samples - sum(spans[s][1] - spans[s][0] for s in todo)
        started = time.perf_counter()
        with _progress_bar(progress and group.rank == 0, num_samples, skipped) as bar:
            counter = _GlobalCount(directory, spans, todo, skipped, bar)
            fixed = FixedBatchModel(model, micro_batch)
            for shard_id in rank_shards(todo, group.rank, group.world_size):
                _generate_shard(
                    fixed, scheduler, directory, shard_id, spans[shard_id], identity, batch_size, target, counter
                )
                counter.update(own=0)
            counter.wait_for_all()  # polling the records keeps the barrier short (no timeout on long shards)
            group.barrier()
        seconds = time.perf_counter() - started
        if group.rank == 0:
            finalize_manifest(directory)
        group.barrier()
        summary = GenerationSummary(directory, num_samples, num_samples - skipped, skipped, seconds, group.world_size)
        if log is not None and group.rank == 0:
            log(summary.describe())
        return summary
    finally:
        if group.created:
            dist.destroy_process_group()


def _shared_plan(group: ProcessGroup, out_dir: Path, identity: dict[str, Any]) -> list[int]:
    """Rank 0 prepares ``out_dir`` and every rank gets the shards to generate, or rank 0's error."""
    plan: tuple[str, Any] = ("ok", None)
    failure: Exception | None = None
    if group.rank == 0:
        try:
            plan = ("ok", prepare_directory(out_dir, identity, group.world_size))
        except Exception as error:
            plan, failure = ("error", str(error)), error
    status, payload = group.share(plan)
    if failure is not None:
        raise failure
    if status == "error":
        raise ValueError(payload)
    todo: list[int] = payload
    return todo


def _generate_shard(
    model: FixedBatchModel,
    scheduler: DDIMStepping,
    out_dir: Path,
    shard_id: int,
    span: tuple[int, int],
    identity: dict[str, Any],
    batch_size: int,
    device: torch.device,
    counter: _GlobalCount,
) -> None:
    """Generate one shard batch by batch, then write its images, its file and its record (in that order)."""
    indices = np.arange(*span, dtype=np.int64)
    seeds = sample_seeds(identity["seed"], indices)
    parts = []
    for start in range(0, len(indices), batch_size):
        batch_seeds = seeds[start : start + batch_size]
        x = sample(
            model,
            scheduler,
            (len(batch_seeds), *identity["sample_shape"]),
            num_inference_steps=identity["num_inference_steps"],
            eta=identity["eta"],
            generator=sample_generators(batch_seeds),
            device=device,
            dtype=SAMPLE_DTYPES[identity["dtype"]],
            progress=False,
        )
        parts.append(x.float().cpu())
        counter.update(own=start + len(batch_seeds))
    samples = torch.cat(parts)
    if identity["png"]:
        _write_pngs(out_dir / "images", indices, samples)
    data = npz_bytes({"indices": indices, "seeds": seeds, "samples": samples.numpy()})
    write_atomic(out_dir / shard_file(shard_id), data)
    record = {
        "shard": shard_id,
        "file": shard_file(shard_id),
        "start": span[0],
        "stop": span[1],
        "bytes": len(data),
        "sha256": sha256_hex(data),
    }
    write_atomic(out_dir / record_file(shard_id), json_bytes(record))


def _write_pngs(folder: Path, indices: np.ndarray, samples: torch.Tensor) -> None:
    """One PNG per sample, ``folder/000123.png``, pixels round(255 (x + 1) / 2) (via ``ddim.app.digits.to_images``)."""
    from PIL import Image

    from ddim.app.digits import to_images

    folder.mkdir(exist_ok=True)
    channels, height, width = samples.shape[1:]
    pixels = to_images(samples.reshape(-1, 1, height, width)).reshape(len(indices), channels, height, width)
    for index, image in zip(indices, pixels, strict=True):
        buffer = io.BytesIO()
        Image.fromarray(image[0] if channels == 1 else image.transpose(1, 2, 0)).save(buffer, format="PNG")
        write_atomic(folder / f"{int(index):06d}.png", buffer.getvalue())


class _GlobalCount:
    """Rank 0's bar position: samples of all shards recorded in this run plus its own shard in progress."""

    def __init__(self, out_dir: Path, spans: list[tuple[int, int]], todo: list[int], skipped: int, bar: Any) -> None:
        self.out_dir, self.spans, self.todo, self.skipped, self.bar = out_dir, spans, set(todo), skipped, bar

    def recorded(self) -> set[int]:
        names = set(os.listdir(self.out_dir))
        return {s for s in self.todo if record_file(s) in names}

    def update(self, own: int) -> None:
        if self.bar is None:
            return
        done = self.recorded()
        self.bar.n = self.skipped + sum(self.spans[s][1] - self.spans[s][0] for s in done) + own
        self.bar.refresh()

    def wait_for_all(self) -> None:
        """Once this rank's shards are done: follow the other ranks' records until every shard is recorded."""
        while len(self.recorded()) < len(self.todo):
            self.update(own=0)
            time.sleep(POLL_SECONDS)
        self.update(own=0)


@contextlib.contextmanager
def _progress_bar(enabled: bool, total: int, initial: int) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    try:
        from tqdm.auto import tqdm
    except ImportError as error:
        raise ImportError("progress=True needs tqdm (pip install 'ddim[cli]'); or pass progress=False") from error
    bar = tqdm(total=total, initial=initial, unit="sample", desc="ddim sample", file=sys.stderr)
    try:
        yield bar
    finally:
        bar.close()
