"""``scheduler_config.json`` files as hostile input: read bounded, metadata keys typed, errors naming the file.

A config file is read with :func:`ddim.file_input.read_json_file` (a regular file, or a link to one as in
the Hugging Face cache; at most :data:`MAX_CONFIG_BYTES`; JSON nesting and integer digits bounded before
any parsing work), must hold a JSON object, and its ``_use_default_values`` must be a list of key names.
The constructor then checks every argument's type and range; :func:`naming_file` puts the file's path in
front of whatever it refuses, so that every message names both the file and the key.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

from ddim.file_input import UnreadableFileError, read_json_file
from ddim.validation import ARGUMENT_ERRORS, ArgumentValueError, type_error

#: Largest config file read: ``trained_betas`` of the largest T (100000 values of ~25 characters) fits.
MAX_CONFIG_BYTES = 16 << 20
#: Deepest JSON nesting of a config file (a diffusers config nests 2 levels).
MAX_CONFIG_DEPTH = 16


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a ``scheduler_config.json``; ``ValueError`` naming the file if it cannot be read, is not a regular
    file, is larger than :data:`MAX_CONFIG_BYTES`, nests deeper than :data:`MAX_CONFIG_DEPTH`, or is not a
    JSON object."""
    try:
        data = read_json_file(path, MAX_CONFIG_BYTES, follow_symlinks=True, max_depth=MAX_CONFIG_DEPTH)
    except UnreadableFileError as error:
        raise ArgumentValueError(str(error)) from None
    if not isinstance(data, dict):
        raise ArgumentValueError(
            f"scheduler config {os.fspath(path)!r} must hold a JSON object, got {type(data).__name__}"
        )
    return data


def default_value_keys(config: Mapping[str, Any]) -> set[str]:
    """The keys listed in ``config["_use_default_values"]`` (none when absent or null).

    ``TypeError`` unless it is a list of strings: diffusers tests ``key in value``, which for a string
    silently drops every key that is a substring of it, and fails with a bare ``TypeError`` for a number.
    """
    listed = config.get("_use_default_values")
    if listed is None:
        return set()
    if not isinstance(listed, (list, tuple)) or not all(isinstance(key, str) for key in listed):
        raise type_error("_use_default_values", listed, "a list of config key names (strings)")
    return set(listed)


@contextlib.contextmanager
def naming_file(path: str | os.PathLike[str]) -> Iterator[None]:
    """Argument errors raised in the block, prefixed with ``path`` (the config file they come from)."""
    try:
        yield
    except ARGUMENT_ERRORS as error:
        raise type(error)(f"{os.fspath(path)}: {error}") from error
