"""A folder the test process cannot write in, also when the tests run as root (as CI does).

Root ignores permission bits (capability CAP_DAC_OVERRIDE), so a mode-0o555 folder alone tests nothing there.
As root, the block runs with that override switched off and back on after it (Linux): CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH leave the thread's effective capability set (they stay permitted, so they can return), and
the real user id becomes ``nobody``, which ``access()`` checks (for a root real id it would consult the permitted
set). Files are still opened as the effective user root, the owner of the folder: its mode 0o555 refuses writes,
while everything root owns stays readable (a Python installed under /root included). Skips, naming why, only
where the switch is impossible.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

#: The conventional uid of ``nobody``: an account that owns nothing here.
NOBODY = 65534
#: linux/capability.h: the capability numbers and the 64-bit (two-word) interface version.
DAC_OVERRIDES = (1 << 1) | (1 << 2)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
CAPABILITY_VERSION_3 = 0x20080522


class CapabilityHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapabilityData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def set_dac_override(enabled: bool) -> None:
    """Raise or lower CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH in this thread's effective set (capget/capset)."""
    libc = ctypes.CDLL(None, use_errno=True)
    header, data = CapabilityHeader(CAPABILITY_VERSION_3, 0), (CapabilityData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    if data[0].permitted & DAC_OVERRIDES != DAC_OVERRIDES:
        raise OSError(0, "CAP_DAC_OVERRIDE is not permitted")
    data[0].effective = data[0].effective | DAC_OVERRIDES if enabled else data[0].effective & ~DAC_OVERRIDES
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


@contextlib.contextmanager
def without_root_override() -> Iterator[None]:
    """Run the block without root's permission override (module doc); unchanged for another user."""
    if os.geteuid() != 0:
        yield
        return
    if not sys.platform.startswith("linux"):
        pytest.skip("root's permission override can only be switched off here on Linux")
    try:
        set_dac_override(False)
    except (OSError, AttributeError) as error:
        pytest.skip(f"root's permission override cannot be switched off here: {error}")
    try:
        os.setresuid(NOBODY, 0, 0)
        try:
            yield
        finally:
            os.setresuid(0, 0, 0)
    finally:
        set_dac_override(True)


@contextlib.contextmanager
def unwritable_folder() -> Iterator[Path]:
    """An empty folder (mode 0o555, in a fresh temporary folder) that the block cannot write in, whoever runs it."""
    with tempfile.TemporaryDirectory(prefix="ddim-unwritable-") as base:
        os.chmod(base, 0o755)  # access() checks the path as the real user: nobody may enter
        folder = Path(base) / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        try:
            with without_root_override():
                if os.access(folder, os.W_OK):
                    pytest.skip("this user can write in a mode-0o555 folder")
                yield folder
        finally:
            folder.chmod(0o755)
