"""Atomic file writes: write a temporary file in the target folder, then rename it onto the target."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_atomically(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> None:
    """Call ``write(temporary_path)`` next to ``path``, then ``os.replace`` it onto ``path``.

    Readers never see a partial file; when ``write`` (or the rename) fails the temporary file is
    removed and the error propagates (``OSError`` for an unwritable folder).
    """
    target = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        os.chmod(temporary, 0o666 & ~current_umask())  # mkstemp makes the file private (0600)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process umask (read by setting it and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
