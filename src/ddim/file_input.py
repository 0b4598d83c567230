"""Reading files from disk as hostile input: regular files only, sizes bounded, JSON depth and integers bounded.

Every reader of a file this package did not just write goes through :func:`open_regular_file` (or
:func:`read_regular_file` / :func:`read_json_file` on top of it): the file is opened with ``O_NONBLOCK``
(a FIFO never blocks the open) and, unless told otherwise, ``O_NOFOLLOW``; ``fstat`` then refuses a FIFO,
a device, a socket or a folder, and a read stops after ``max_bytes`` (a file that grows while being read,
or a ``/proc`` file reporting size 0, is still bounded). JSON text is scanned for its nesting depth before
it is parsed, and its integers are limited in digits while it is parsed, so neither a deep nesting
(``RecursionError``) nor a huge integer (seconds of conversion) costs more than the bounded scan.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import re
import stat
from collections.abc import Iterator
from typing import Any

from ddim.validation import ArgumentValueError

#: Deepest JSON nesting a file may have (configs and records of this package nest 4 levels at most).
MAX_JSON_DEPTH = 64
#: Most digits of a JSON integer (an int64 has 19; a seed or a count of this package fits easily).
MAX_INT_DIGITS = 40
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")
_KINDS = (
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class UnreadableFileError(ArgumentValueError):
    """A file that is not a regular file, is too large, cannot be opened, or holds JSON that is not allowed."""


def file_kind(mode: int) -> str:
    """``"a FIFO (named pipe)"``, ``"a folder"``, ... for a non-regular ``st_mode``; ``"a regular file"`` else."""
    return next((name for test, name in _KINDS if test(mode)), "a regular file" if stat.S_ISREG(mode) else "special")


@contextlib.contextmanager
def open_regular_file(path: str | os.PathLike[str], *, follow_symlinks: bool = False) -> Iterator[int]:
    """A read-only descriptor of the regular file ``path`` (closed on leaving the block).

    :class:`UnreadableFileError` (naming the path and why) when it is missing, a symbolic link (unless
    ``follow_symlinks``; a link is then judged by its target), or not a regular file; never blocks.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        descriptor = os.open(path, flags)
    except OSError as error:
        if error.errno == errno.ELOOP and not follow_symlinks:
            raise UnreadableFileError(f"{os.fspath(path)} is a symbolic link; only regular files are read") from None
        raise UnreadableFileError(f"{os.fspath(path)} cannot be opened: {error.strerror or error}") from None
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise UnreadableFileError(f"{os.fspath(path)} is {file_kind(mode)}, not a regular file")
        os.set_blocking(descriptor, True)
        yield descriptor
    finally:
        os.close(descriptor)


def read_descriptor(descriptor: int, max_bytes: int, path: str | os.PathLike[str]) -> bytes:
    """The bytes of an open regular file from offset 0; :class:`UnreadableFileError` past ``max_bytes``."""
    if os.fstat(descriptor).st_size > max_bytes:
        raise too_large(path, max_bytes)
    chunks, total = [], 0
    while total <= max_bytes:
        chunk = os.pread(descriptor, min(1 << 20, max_bytes + 1 - total), total)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    if total > max_bytes:
        raise too_large(path, max_bytes)
    return b"".join(chunks)


def too_large(path: str | os.PathLike[str], max_bytes: int) -> UnreadableFileError:
    return UnreadableFileError(f"{os.fspath(path)} is larger than {max_bytes} bytes, the most this file may hold")


def read_regular_file(path: str | os.PathLike[str], max_bytes: int, *, follow_symlinks: bool = False) -> bytes:
    """The bytes of the regular file ``path``, at most ``max_bytes`` (see :func:`open_regular_file`)."""
    with open_regular_file(path, follow_symlinks=follow_symlinks) as descriptor:
        return read_descriptor(descriptor, max_bytes, path)


def json_depth(data: bytes) -> int:
    """The deepest nesting of arrays and objects in JSON text ``data`` (brackets inside strings not counted)."""
    brackets = _BRACKETS.findall(_STRING.sub(b"", data))
    return max(itertools.accumulate(1 if b in (b"[", b"{") else -1 for b in brackets), default=0)


def parse_json(
    data: bytes, source: str | os.PathLike[str], max_depth: int = MAX_JSON_DEPTH, max_int_digits: int = MAX_INT_DIGITS
) -> Any:
    """JSON text ``data`` (read from ``source``) parsed; :class:`UnreadableFileError` naming ``source`` when it is
    not UTF-8 JSON, nests deeper than ``max_depth`` or holds an integer of more than ``max_int_digits`` digits."""
    depth = json_depth(data)
    if depth > max_depth:
        raise UnreadableFileError(f"{os.fspath(source)} nests JSON {depth} levels deep; at most {max_depth} allowed")

    def bounded_int(text: str) -> int:
        if len(text.lstrip("-")) > max_int_digits:
            raise UnreadableFileError(
                f"{os.fspath(source)} holds an integer of {len(text.lstrip('-'))} digits; at most {max_int_digits}"
            )
        return int(text)

    try:
        return json.loads(data.decode("utf-8"), parse_int=bounded_int)
    except UnicodeDecodeError as error:
        raise UnreadableFileError(f"{os.fspath(source)} is not UTF-8 text: {error}") from None
    except json.JSONDecodeError as error:
        raise UnreadableFileError(f"{os.fspath(source)} is not valid JSON: {error}") from None


def read_json_file(
    path: str | os.PathLike[str],
    max_bytes: int,
    *,
    follow_symlinks: bool = False,
    max_depth: int = MAX_JSON_DEPTH,
) -> Any:
    """The JSON value in the regular file ``path`` (see :func:`read_regular_file` and :func:`parse_json`)."""
    return parse_json(read_regular_file(path, max_bytes, follow_symlinks=follow_symlinks), path, max_depth)
