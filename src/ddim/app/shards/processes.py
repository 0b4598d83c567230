"""The processes of a job: the torch.distributed group, each rank's device, and waiting for every rank's shards."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from ddim.app.shards.layout import record_file
from ddim.validation import ArgumentValueError

T = TypeVar("T")

#: How often (seconds) a rank whose own shards are done looks at the records of the other ranks.
POLL_SECONDS = 0.2


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

    def run_on_rank0(self, compute: Callable[[], T]) -> T:
        """``compute()`` on rank 0 only, its value on every rank; when it fails every rank raises.

        Rank 0 raises the error itself, the other ranks a ``ValueError`` with its message.
        """
        outcome: tuple[str, Any] = ("ok", None)
        failure: Exception | None = None
        if self.rank == 0:
            try:
                outcome = ("ok", compute())
            except Exception as error:
                outcome, failure = ("error", str(error)), error
        status, payload = self.share(outcome)
        if failure is not None:
            raise failure
        if status == "error":
            raise ArgumentValueError(payload)
        value: T = payload
        return value


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
        raise ArgumentValueError(f"device={str(chosen)!r} was asked for but CUDA is not available; use device='cpu'")
    if chosen.index is None:
        chosen = torch.device("cuda", local_rank)
    if chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise ArgumentValueError(
            f"device={str(chosen)!r} does not exist: {torch.cuda.device_count()} CUDA device(s) visible "
            f"(LOCAL_RANK={local_rank}); launch at most that many processes per node"
        )
    torch.cuda.set_device(chosen)
    return chosen


def recorded_shards(out_dir: Path, shard_ids: Collection[int]) -> set[int]:
    """The shards of ``shard_ids`` whose record is in ``out_dir`` (written by whichever rank generated them)."""
    names = set(os.listdir(out_dir))
    return {s for s in shard_ids if record_file(s) in names}


def wait_for_shards(
    out_dir: Path,
    shard_ids: Collection[int],
    observe: Callable[[set[int]], None] | None = None,
    poll_seconds: float = POLL_SECONDS,
) -> None:
    """Return once every shard of ``shard_ids`` is recorded in ``out_dir``, polling the records.

    Every rank calls it once its own shards are done, before the barrier: polling keeps the barrier
    short, so that no rank waits in it (and hits its timeout) while another finishes long shards.
    ``observe`` (a progress display, say) gets the recorded shards at every poll and once at the end.
    """
    pending = set(shard_ids)
    while True:
        done = recorded_shards(out_dir, pending)
        if observe is not None:
            observe(done)
        if len(done) == len(pending):
            return
        time.sleep(poll_seconds)
