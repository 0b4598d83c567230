"""The processes of a job: the torch.distributed group, each rank's device, and waiting for every rank's shards."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from ddim.app.shards.layout import ShardError, record_file
from ddim.validation import ArgumentValueError

T = TypeVar("T")

#: How often (seconds) a rank whose own shards are done looks at the records of the other ranks.
POLL_SECONDS = 0.2
#: ``prctl`` option: the signal a process gets when its parent dies (Linux).
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in the job: rank, world size, local rank, whether we created the group, and
    the pid of the launcher (torchrun's agent) whose death ends this process (None outside torchrun)."""

    rank: int
    world_size: int
    local_rank: int
    created: bool
    parent_pid: int | None = None

    def check_parent(self) -> None:
        """``ShardError`` when the launcher of this process has died (this process was left behind)."""
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            raise ShardError(f"the launcher of this process (pid {self.parent_pid}) has died; stopping")

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
    parent = die_with_parent() if "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ else None
    if dist.is_available() and dist.is_initialized():
        return ProcessGroup(dist.get_rank(), dist.get_world_size(), local_rank, created=False, parent_pid=parent)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return ProcessGroup(0, 1, 0, created=False, parent_pid=parent)
    dist.init_process_group(backend="gloo")
    return ProcessGroup(dist.get_rank(), dist.get_world_size(), local_rank, created=True, parent_pid=parent)


def die_with_parent() -> int | None:
    """Have the kernel send SIGTERM to this process when its parent dies (Linux); the parent's pid, or None.

    A torchrun worker would otherwise outlive a killed launcher and go on writing next to its rerun.
    Elsewhere (or where ``prctl`` fails) nothing is set and None is returned.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return os.getppid()


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
    check: Callable[[], None] | None = None,
) -> None:
    """Return once every shard of ``shard_ids`` is recorded in ``out_dir``, polling the records.

    Every rank calls it once its own shards are done, before the barrier: polling keeps the barrier
    short, so that no rank waits in it (and hits its timeout) while another finishes long shards.
    ``observe`` (a progress display, say) gets the recorded shards at every poll and once at the end.
    ``check`` runs before every sleep and raises to end the wait: when the job's lock or launcher is gone,
    the records waited for will never come.
    """
    pending = set(shard_ids)
    while True:
        done = recorded_shards(out_dir, pending)
        if observe is not None:
            observe(done)
        if len(done) == len(pending):
            return
        if check is not None:
            check()
        time.sleep(poll_seconds)
