"""Generating the shards of a run: :func:`generate_shards`, fixed micro-batches, shard and PNG writing.

Sample ``i`` of a run depends on ``(seed, i)`` alone, so the set of samples is the same, bit for bit on
one device type, whatever the number of processes K and the batch size:

- its seed is :func:`ddim.app.seeding.sample_seeds` of (seed, i) (the rule of ``ddim sample``), and a CPU
  ``torch.Generator`` with that seed draws its x_T and every step's noise (``ddim.sample`` with a list
  of per-row generators);
- the model is always called on micro-batches of exactly ``micro_batch`` rows holding the indices
  ``[k * micro_batch, (k + 1) * micro_batch)`` (the last one padded with zero rows), because CPU and GPU
  kernels pick their algorithm by batch size: on the CPU this was written on, a convolution or a linear
  layer gives other bits for a row in a batch of 1, of 2-3 and of 4 or more rows.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ddim.app.images import png_bytes, to_uint8
from ddim.app.seeding import sample_generators, sample_seeds
from ddim.app.shards.conditioning import Conditioning
from ddim.app.shards.files import json_bytes, npz_bytes, sha256_hex, write_file, writing
from ddim.app.shards.layout import SAMPLE_DTYPES, rank_shards, record_file, shard_count, shard_file, shard_ranges
from ddim.app.shards.lock import JobLock, watch_lock
from ddim.app.shards.manifest import finalize_manifest, model_description, prepare_directory, run_identity
from ddim.app.shards.processes import (
    ProcessGroup,
    join_process_group,
    rank_device,
    recorded_shards,
    wait_for_shards,
)
from ddim.app.shards.statistics import FeatureExtractor, shard_statistics
from ddim.app.wording import counted
from ddim.model import Model, NonFiniteOutputError
from ddim.progress import Progress
from ddim.sampling import sample
from ddim.scheduler_protocol import DDIMSchedulerLike
from ddim.validation import ArgumentValueError, check_int, check_real


# --------------------------------------------------------------------------- fixed micro-batches
class FixedBatchModel:
    """``model`` called on micro-batches of exactly ``micro_batch`` rows (the last one padded with zeros).

    Row ``r`` of a batch lands in micro-batch ``r // micro_batch``; when batches start at multiples of
    ``micro_batch`` (as the shards and batches of :func:`generate_shards` do), a sample meets the model
    in the same micro-batch whatever the batch size, so its output does not depend on it.
    """

    def __init__(self, model: Model, micro_batch: int) -> None:
        self.model = model
        self.micro_batch = check_int("micro_batch", micro_batch, minimum=1)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, *per_row: torch.Tensor) -> torch.Tensor:
        """``model(x, t, *per_row)`` by micro-batches; ``per_row`` tensors (labels) are split and padded like ``t``."""
        size = self.micro_batch
        outputs = []
        for start in range(0, x.shape[0], size):
            chunk, steps = x[start : start + size], t[start : start + size]
            extra = [values[start : start + size] for values in per_row]
            rows = chunk.shape[0]
            if rows < size:
                chunk = torch.cat([chunk, chunk.new_zeros((size - rows, *chunk.shape[1:]))])
                steps = torch.cat([steps, steps[-1:].expand(size - rows)])
                extra = [torch.cat([values, values[-1:].expand(size - rows)]) for values in extra]
            outputs.append(self.model(chunk, steps, *extra)[:rows])
        return torch.cat(outputs)


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
            f"{counted(self.generated, 'sample')} in {self.seconds:.2f} s: {self.samples_per_second:.1f} samples/s "
            f"on {counted(self.world_size, 'process', 'processes')} "
            f"({self.skipped} already complete, {self.num_samples} in {self.out_dir})"
        )


def generate_shards(
    model: Model,
    scheduler: DDIMSchedulerLike,
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
    conditioning: Conditioning | None = None,
    fid_features: FeatureExtractor | None = None,
) -> GenerationSummary:
    """Generate samples ``0 .. num_samples - 1`` into shards under ``out_dir``, resuming what is there.

    Run it in every process of a ``torchrun`` job (or in one plain process): each rank generates a
    disjoint share of the shards still to do. ``batch_size`` and ``shard_size`` must be multiples of
    ``micro_batch`` (micro-batches then sit at fixed indices). ``batch_size`` and the number of
    processes do not change the samples; everything else is recorded in the manifest and must match
    it on resume. ``png`` also writes ``images/000123.png`` per sample (samples of shape (1, H, W) or
    (3, H, W) in [-1, 1]). Rank 0 shows a progress bar (when tqdm is installed) counting the samples
    of all ranks and finally logs the throughput (``log``; None for silence). Returns the same
    summary on every rank.

    ``conditioning`` makes a class-conditional job (``model(x, t, labels)``; labels by its label rule, stored
    per sample as ``labels``; :mod:`.conditioning`); ``fid_features`` adds each shard's feature statistics
    (:mod:`.statistics`). Both are recorded in the manifest's config (``conditioning``, ``fid_stats``).

    Rank 0 holds the directory's lock (:mod:`.lock`) for the whole call: another job on the same
    directory is refused at once (:class:`~ddim.app.shards.lock.DirectoryInUseError`), a stale lock is
    taken over (a note to ``log``). Under torchrun a rank ends with its launcher, and a rank waiting
    for the others stops when the job's lock is gone. A write that fails for want of space or rights
    raises :class:`ShardError` (``"cannot write PATH: ..."``) and leaves no partial file.
    """
    num_samples = check_int("num_samples", num_samples, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    sample_seeds(seed, [num_samples - 1])  # seed and indices below 2**32
    eta = check_real("eta", eta, minimum=0.0)
    micro_batch = check_int("micro_batch", micro_batch, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    shard_size = check_int("shard_size", shard_size, minimum=1)
    shard_count(num_samples, shard_size)  # at most MAX_SHARDS
    shape = tuple(check_int("sample_shape", d, minimum=1) for d in sample_shape)
    if not shape:
        raise ArgumentValueError("sample_shape=() must hold at least one dimension (the shape of one sample)")
    if batch_size % micro_batch or shard_size % micro_batch:
        raise ArgumentValueError(
            f"batch_size={batch_size} and shard_size={shard_size} must be multiples of micro_batch={micro_batch} "
            "(so that every micro-batch the model sees holds the same sample indices in every run)"
        )
    if dtype not in SAMPLE_DTYPES.values():
        raise ArgumentValueError(f"dtype={dtype} is not supported; allowed {list(SAMPLE_DTYPES)}")
    if png and shape[0] not in (1, 3):
        raise ArgumentValueError(f"png=True needs samples of shape (1, H, W) or (3, H, W), got sample_shape={shape}")
    group = join_process_group()
    held: list[JobLock] = []  # rank 0's lock of the directory, for the whole job
    try:
        if group.world_size > num_samples:
            raise ArgumentValueError(
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
        if conditioning is not None:
            identity["conditioning"] = conditioning.describe()
        if fid_features is not None:
            identity["fid_stats"] = fid_features.describe()
        directory = Path(out_dir)

        def prepare() -> tuple[list[int], dict[str, Any]]:
            lock, shards = prepare_directory(directory, identity, group.world_size, log)
            held.append(lock)
            return shards, lock.owner

        todo, owner = group.run_on_rank0(prepare)
        if log is not None and group.rank == 0 and 0 < len(todo) < group.world_size:
            log(
                f"note: {len(todo)} shard(s) to generate for {group.world_size} processes, so some processes are "
                f"idle; a smaller shard_size (now {shard_size}) spreads the work"
            )
        spans = shard_ranges(num_samples, shard_size)
        skipped = num_samples - sum(spans[s][1] - spans[s][0] for s in todo)
        started = time.perf_counter()
        shown = progress and group.rank == 0
        with Progress(num_samples, "ddim sample", "sample", enabled=shown, initial=skipped) as bar:
            count = _RunCount(bar, directory, spans, todo, skipped) if shown else None
            fixed = FixedBatchModel(model, micro_batch)
            show = count.show if count is not None else None
            for shard_id in rank_shards(todo, group.rank, group.world_size):
                _generate_shard(
                    fixed,
                    scheduler,
                    directory,
                    shard_id,
                    spans[shard_id],
                    identity,
                    batch_size,
                    target,
                    show,
                    conditioning,
                    fid_features,
                )
                if show is not None:
                    show()
            wait_for_shards(
                directory,
                todo,
                count.show_recorded if count is not None else None,
                check=_job_check(group, directory, owner),
            )
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
        for lock in held:
            lock.release()
        if group.created:
            dist.destroy_process_group()


def _job_check(group: ProcessGroup, out_dir: Path, owner: dict[str, Any]) -> Callable[[], None]:
    """What ends a rank's wait for the other ranks' shards: its launcher died, or the job's lock is gone."""

    lock_held = watch_lock(out_dir, owner)

    def check() -> None:
        group.check_parent()
        lock_held()

    return check


def _generate_shard(
    model: FixedBatchModel,
    scheduler: DDIMSchedulerLike,
    out_dir: Path,
    shard_id: int,
    span: tuple[int, int],
    identity: dict[str, Any],
    batch_size: int,
    device: torch.device,
    on_batch: Callable[[int], None] | None,
    conditioning: Conditioning | None = None,
    fid_features: FeatureExtractor | None = None,
) -> None:
    """Generate one shard batch by batch, then write its images, its file and its record (in that order).

    ``on_batch`` gets the number of samples of the shard done so far after every batch.
    """
    indices = np.arange(*span, dtype=np.int64)
    seeds = sample_seeds(identity["seed"], indices)
    labels = conditioning.labels(identity["seed"], indices) if conditioning is not None else None
    parts = []
    for start in range(0, len(indices), batch_size):
        batch_seeds = seeds[start : start + batch_size]
        if conditioning is not None and labels is not None:
            x = conditioning.sample(
                model,
                scheduler,
                labels[start : start + batch_size],
                batch_seeds,
                identity["sample_shape"],
                num_inference_steps=identity["num_inference_steps"],
                eta=identity["eta"],
                device=device,
                dtype=SAMPLE_DTYPES[identity["dtype"]],
            )
        else:
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
        if on_batch is not None:
            on_batch(start + len(batch_seeds))
    samples = torch.cat(parts)
    if not bool(torch.isfinite(samples).all()):  # nothing of this shard is written or recorded
        bad = int((~torch.isfinite(samples)).flatten(1).any(dim=1).nonzero()[0])
        raise NonFiniteOutputError(
            f"sample {int(indices[bad])} of shard {shard_id} came out non-finite (NaN or inf): the model or its "
            "scheduler config produces invalid values; nothing of this shard was written"
        )
    if identity["png"]:
        _write_pngs(out_dir / "images", indices, samples)
    arrays = {"indices": indices, "seeds": seeds, "samples": samples.numpy()}
    if labels is not None:
        arrays["labels"] = labels
    if fid_features is not None:
        num_labels = conditioning.num_labels if conditioning is not None else None
        arrays.update(shard_statistics(fid_features(arrays["samples"]), labels, num_labels))
    data = npz_bytes(arrays)
    write_file(out_dir / shard_file(shard_id), data)
    record = {
        "shard": shard_id,
        "file": shard_file(shard_id),
        "start": span[0],
        "stop": span[1],
        "bytes": len(data),
        "sha256": sha256_hex(data),
    }
    write_file(out_dir / record_file(shard_id), json_bytes(record))


def _write_pngs(folder: Path, indices: np.ndarray, samples: torch.Tensor) -> None:
    """One PNG per sample, ``folder/000123.png``, pixels round(255 (x + 1) / 2) (``ddim.app.images.to_uint8``)."""
    with writing(folder):
        folder.mkdir(exist_ok=True)
    for index, image in zip(indices, to_uint8(samples), strict=True):
        write_file(folder / f"{int(index):06d}.png", png_bytes(image))


class _RunCount:
    """Rank 0's bar position: samples complete before the run, recorded in it, and of its own shard in progress."""

    def __init__(
        self, bar: Progress, out_dir: Path, spans: list[tuple[int, int]], todo: list[int], skipped: int
    ) -> None:
        self.bar, self.out_dir, self.spans, self.todo, self.skipped = bar, out_dir, spans, set(todo), skipped

    def show(self, own: int = 0) -> None:
        """Show the recorded shards plus ``own`` samples of this rank's shard in progress."""
        self.show_recorded(recorded_shards(self.out_dir, self.todo), own)

    def show_recorded(self, done: set[int], own: int = 0) -> None:
        self.bar.set_position(self.skipped + sum(self.spans[s][1] - self.spans[s][0] for s in done) + own)
