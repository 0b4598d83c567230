"""Sharded, resumable sample generation on one process or many (``torchrun``, torch.distributed).

An output directory holds ``manifest.json`` (the configuration that identifies the run, and the
SHA-256 of every complete shard), the shards ``shard-00000.npz`` ... (arrays ``indices``, ``seeds``,
``samples``; shard ``s`` holds the indices ``[s * shard_size, (s + 1) * shard_size)``), and, while a
run is going, its lock ``.lock`` and one ``shard-00000.json`` record per shard finished (folded into
the manifest by rank 0, for shards the manifest does not list and whose checksum matches: a record
never overrides the manifest). Every file is written atomically: temporary name, fsync, rename.
Shards are the unit of work and of resume: complete shards are skipped, the others are redone and
dealt round-robin to the ranks. One job at a time writes a directory (its rank 0 holds the lock).

Modules: :mod:`.layout` (names, constants, partition), :mod:`.schema` (manifest structure),
:mod:`.files` (file format, writing, manifest and records, shard checks), :mod:`.lock` (the job's
lock), :mod:`.manifest` (run identity, directory preparation), :mod:`.processes` (process group,
devices, waiting for all ranks), :mod:`.generation` (:func:`generate_shards`) and :mod:`.verify`
(verification, loading, merging). Class-conditional jobs: :mod:`.conditioning` (label rule, guided batches; shards
then hold ``labels``); feature statistics: :mod:`.statistics` (per shard) and :mod:`.merged_statistics` (summed
without loading samples); :mod:`.export` (``npz``, ``adm``, ``png-folder``).
"""

from ddim.app.shards.files import read_manifest
from ddim.app.shards.generation import FixedBatchModel, GenerationSummary, generate_shards
from ddim.app.shards.layout import ShardError, rank_shards, record_file, shard_file, shard_ranges
from ddim.app.shards.lock import DirectoryInUseError
from ddim.app.shards.processes import ProcessGroup, rank_device
from ddim.app.shards.verify import OutputExistsError, VerifyReport, load_samples, merge_shards, verify_shards

__all__ = [
    "DirectoryInUseError",
    "FixedBatchModel",
    "GenerationSummary",
    "OutputExistsError",
    "ProcessGroup",
    "ShardError",
    "VerifyReport",
    "generate_shards",
    "load_samples",
    "merge_shards",
    "rank_device",
    "rank_shards",
    "read_manifest",
    "record_file",
    "shard_file",
    "shard_ranges",
    "verify_shards",
]
