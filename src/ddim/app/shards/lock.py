"""The lock of a shard directory: one job at a time writes it.

The job (rank 0 of a torchrun job) creates ``DIR/.lock`` with ``O_CREAT | O_EXCL``, holds an exclusive
``flock`` on it for its whole duration and removes it at the end; the file holds the owner's pid, host,
start time and a random token (JSON). Another job finds the file and is refused at once, unless the lock is stale: its
owner, on this host, no longer runs (the ``flock`` is free, or where ``flock`` is not available its pid is
gone). A stale lock is taken over. A lock of another host is never judged stale (its pid cannot be seen).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ddim.app.shards.layout import LOCK_NAME, MAX_RECORD_BYTES, ShardError
from ddim.file_input import UnreadableFileError, file_kind, open_regular_file, read_regular_file

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]


#: A lock file without an owner written is taken for a job starting now for this long (seconds).
STARTING_SECONDS = 10.0
#: How long (seconds) a rank sees its job's lock gone or replaced before it stops waiting.
LOCK_GRACE_SECONDS = 3.0


class DirectoryInUseError(ShardError):
    """Another job holds the directory's lock."""


class JobLock(contextlib.AbstractContextManager["JobLock"]):
    """A held lock: :meth:`release` (or leaving the ``with`` block) removes the lock file."""

    def __init__(self, path: Path, descriptor: int, owner: dict[str, Any]) -> None:
        self.path, self.descriptor, self.owner = path, descriptor, owner

    def release(self) -> None:
        """Remove the lock file (if it is still ours) and close it; calling it again does nothing."""
        if self.descriptor < 0:
            return
        try:
            if _same_file(self.path, self.descriptor):
                self.path.unlink()
        finally:
            os.close(self.descriptor)
            self.descriptor = -1

    def __exit__(self, *exception: object) -> None:
        self.release()


def acquire_lock(out_dir: Path, log: Callable[[str], None] | None = None) -> JobLock:
    """Lock ``out_dir`` (an existing folder) for this process; :class:`DirectoryInUseError` if another job holds it.

    A stale lock is taken over, and ``log`` is told so in one line.
    """
    path = out_dir / LOCK_NAME
    for _ in range(5):  # each round either locks, refuses, or removes a stale lock that another round replaces
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "token": uuid.uuid4().hex,  # tells this job from a later one of the same pid in the same second
        }
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            stale = _take_stale(path)
            if stale is not None and log is not None:
                log(f"note: the lock of {out_dir} ({owner_text(stale[0])}) is stale, {stale[1]}: taking it over")
            continue
        try:
            if fcntl is not None:  # before the owner is written (see _take_stale); others hold it for an instant only
                with contextlib.suppress(OSError):  # a filesystem without flock
                    fcntl.flock(descriptor, fcntl.LOCK_EX)
            os.write(descriptor, json.dumps(owner).encode())
        except BaseException:
            path.unlink(missing_ok=True)
            os.close(descriptor)
            raise
        return JobLock(path, descriptor, owner)
    raise DirectoryInUseError(f"{out_dir} is being locked by other jobs all the time; try again")


def read_owner(out_dir: Path) -> dict[str, Any] | None:
    """The owner written in ``out_dir``'s lock file, or None without a readable one."""
    try:
        return _parse_owner(read_regular_file(out_dir / LOCK_NAME, MAX_RECORD_BYTES))
    except UnreadableFileError:
        return None  # missing, not a regular file (never opened), or too large


def _parse_owner(data: bytes) -> dict[str, Any] | None:
    try:
        owner = json.loads(data)
    except ValueError:
        return None
    return owner if isinstance(owner, dict) else None


def owner_text(owner: dict[str, Any]) -> str:
    """``"pid N on HOST since T"``."""
    return f"pid {owner.get('pid')} on {owner.get('host')} since {owner.get('started')}"


def describe_owner(out_dir: Path, owner: dict[str, Any]) -> str:
    """``"DIR is in use by pid N on HOST since T"``."""
    return f"{out_dir} is in use by {owner_text(owner)}"


def check_lock(out_dir: Path, owner: dict[str, Any]) -> None:
    """``ShardError`` unless ``out_dir``'s lock is still held by ``owner`` (the job this process belongs to)."""
    if read_owner(out_dir) != owner:
        raise ShardError(
            f"{out_dir}: the lock of this job (pid {owner.get('pid')} on {owner.get('host')}) is gone, so the job "
            "has ended or lost the directory; stopping (rerun the same command to finish it)"
        )


def watch_lock(out_dir: Path, owner: dict[str, Any], grace_seconds: float = LOCK_GRACE_SECONDS) -> Callable[[], None]:
    """A check for polling loops: :func:`check_lock` once the lock has been wrong for ``grace_seconds`` on end.

    The grace keeps a shared filesystem's caches (another node's view of the file) from ending a job.
    """
    wrong_since: list[float] = []

    def check() -> None:
        try:
            check_lock(out_dir, owner)
        except ShardError:
            wrong_since[:] = wrong_since or [time.monotonic()]
            if time.monotonic() - wrong_since[0] >= grace_seconds:
                raise
        else:
            wrong_since.clear()

    return check


def _take_stale(path: Path) -> tuple[dict[str, Any], str] | None:
    """Remove the lock file at ``path`` if its owner no longer runs and return that owner and why it is judged
    stale; None when the file went away meanwhile; else refuse (a FIFO, a link or a device is never opened)."""
    try:
        with open_regular_file(path) as descriptor:
            return _take_stale_open(path, descriptor)
    except UnreadableFileError as error:
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return None  # released meanwhile: try again
        what = file_kind(mode)
        why = str(error) if what == "a regular file" else f"{path} is {what}, not a lock file of this tool"
        raise ShardError(
            f"{path.parent} cannot be locked: {why}; if no job is writing {path.parent}, remove it"
        ) from None


def _take_stale_open(path: Path, descriptor: int) -> tuple[dict[str, Any], str] | None:
    """:func:`_take_stale` with the lock file open as ``descriptor``."""
    free = _try_flock(descriptor)
    owner = _parse_owner(os.pread(descriptor, 1 << 16, 0))
    if owner is None:
        if free is False or time.time() - os.fstat(descriptor).st_mtime < STARTING_SECONDS:
            raise DirectoryInUseError(f"{path.parent} is in use by a job that is starting now")
        raise DirectoryInUseError(
            f"{path.parent} is locked by {path}, which cannot be read; if no job is writing {path.parent}, "
            "remove that file"
        )
    busy = describe_owner(path.parent, owner)
    if owner.get("host") != socket.gethostname():
        raise DirectoryInUseError(f"{busy}; wait for that job to end (if it has died, remove {path})")
    alive = _pid_alive(owner.get("pid"))
    if free is False or (free is None and alive):
        raise DirectoryInUseError(f"{busy}; wait for that job to end, or stop it")
    if not _same_file(path, descriptor):
        return None  # replaced meanwhile: try again
    path.unlink()  # under our flock of the stale file: nobody else can be taking it over
    why = "no process holds it (its pid runs, but does not hold the lock)" if alive else "its process is gone"
    return owner, why


def _try_flock(descriptor: int) -> bool | None:
    """Whether an exclusive flock of ``descriptor`` was free (now ours until it is closed); None if unsupported."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None  # a filesystem without flock
    return True


def _same_file(path: Path, descriptor: int) -> bool:
    try:
        return os.path.samestat(os.stat(path), os.fstat(descriptor))
    except FileNotFoundError:
        return False


def _pid_alive(pid: object) -> bool:
    """Whether process ``pid`` of this host runs (a zombie does not)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True
