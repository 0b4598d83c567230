"""A folder the test process cannot write in, also when the tests run as root (as CI does).

Root ignores permission bits, so a mode-0o555 folder alone tests nothing there. As root, the block runs as
user ``nobody``: the process's real, effective and saved group ids and its real and effective user ids are
switched (``setresgid``/``setresuid``; root stays the saved user id, so the switch back is allowed) and restored
after the block. The folder lives in a fresh temporary folder that ``nobody`` can enter, outside pytest's
``tmp_path`` (whose ancestors only root may enter). Skips, naming why, only where no switch is possible.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

#: The conventional uid and gid of ``nobody``: an account that owns nothing here.
NOBODY = 65534


@contextlib.contextmanager
def as_nobody() -> Iterator[None]:
    """Run the block as ``nobody`` when the process is root (module doc); as itself otherwise."""
    if os.geteuid() != 0:
        yield
        return
    if not hasattr(os, "setresuid"):
        pytest.skip("root cannot drop its privileges on this platform (no setresuid)")
    preload()
    groups = os.getgroups()
    try:
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, 0)
        os.setresuid(NOBODY, NOBODY, 0)
    except OSError as error:  # no CAP_SETUID / CAP_SETGID (a restricted container)
        os.setresgid(0, 0, 0)
        os.setgroups(groups)
        pytest.skip(f"root cannot switch to user nobody here: {error}")
    try:
        yield
    finally:
        os.setresuid(0, 0, 0)
        os.setresgid(0, 0, 0)
        os.setgroups(groups)


@contextlib.contextmanager
def unwritable_folder(readable: Path | None = None) -> Iterator[Path]:
    """An empty folder (mode 0o555) that the block cannot create files in, whoever runs the tests.

    ``readable``: a folder copied next to it (``folder.parent / readable.name``), readable by the block.
    """
    with tempfile.TemporaryDirectory(prefix="ddim-unwritable-") as base:
        os.chmod(base, 0o755)
        if readable is not None:
            copy = shutil.copytree(readable, Path(base) / readable.name)
            for path in [copy, *copy.rglob("*")]:
                path.chmod(0o755 if path.is_dir() else 0o644)
        folder = Path(base) / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        try:
            with as_nobody():
                if not os.access(base, os.X_OK):
                    pytest.skip(f"user nobody cannot enter {base} (a temporary folder others may not enter)")
                if os.access(folder, os.W_OK):
                    pytest.skip("this user can write to a mode-0o555 folder")
                yield folder
        finally:
            folder.chmod(0o755)


def preload() -> None:
    """Import what the blocks import lazily: the standard library may live where only root can read (pyenv)."""
    import secrets  # noqa: F401  (numpy's fresh entropy)
