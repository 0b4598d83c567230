"""Atomic file writes: write a temporary file in the target folder, then rename it onto the target."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The suffix of the temporary files (named ``.{target name}.{random}.tmp``, next to the target).
TEMP_SUFFIX = ".tmp"


def write_atomically(path: str | os.PathLike[str], write: Callable[[Path], Any], durable: bool = False) -> None:
    """Call ``write(temporary_path)`` next to ``path``, then ``os.replace`` it onto ``path``.

    Readers never see a partial file; when ``write`` (or the rename) fails the temporary file is
    removed and the error propagates (``OSError`` for an unwritable folder). The file gets mode
    0o666 less the umask. ``durable`` also fsyncs the file before the rename and the folder after
    it, so that the file survives a crash of the machine.
    """
    target = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        os.chmod(temporary, 0o666 & ~current_umask())  # mkstemp makes the file private (0600)
        if durable:
            fsync(temporary)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    if durable:
        fsync(target.parent)


def write_bytes_atomically(path: str | os.PathLike[str], data: bytes, durable: bool = True) -> None:
    """Write ``data`` to ``path`` with :func:`write_atomically` (durable unless told otherwise)."""
    write_atomically(path, lambda temporary: temporary.write_bytes(data), durable=durable)


def write_bytes_exclusively(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to a new file ``path``: ``FileExistsError`` (nothing written) if ``path`` exists.

    The bytes go to a temporary file first (fsynced), which is then hard-linked to ``path``: the link is
    atomic and fails when ``path`` exists, so of two concurrent writers exactly one succeeds and no reader
    ever sees a partial file. Where the filesystem has no hard links, ``path`` is created with
    ``O_CREAT | O_EXCL`` and written (still exclusive, though a reader may then see it while it is written).
    """
    target = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o666 & ~current_umask())
        try:
            os.link(temporary, target)
        except OSError as error:
            if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            with os.fdopen(descriptor, "wb") as stream:
                stream.write(data)
    finally:
        Path(temporary).unlink(missing_ok=True)
    fsync(target.parent)


def fsync(path: str | os.PathLike[str]) -> None:
    """Flush a file's or a folder's data to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def current_umask() -> int:
    """The process umask (read by setting it and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
