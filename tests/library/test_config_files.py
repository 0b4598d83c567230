"""``scheduler_config.json`` files written by an attacker: every key typed and ranged with the file and key named,
JSON depth, integer size and file size bounded before parsing, special files never read; what the constructor
accepts, ``set_timesteps`` can use."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddim import DDIMInverseScheduler, DDIMScheduler
from ddim.config_files import MAX_CONFIG_BYTES
from ddim.file_input import MAX_INT_DIGITS, UnreadableFileError, json_depth, parse_json, read_regular_file
from ddim.schedules import MAX_TRAIN_TIMESTEPS
from ddim.validation import ARGUMENT_ERRORS

KEYS = DDIMScheduler.init_keys()


def write_config(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "scheduler_config.json"
    path.write_text(text)
    return path


# one hostile value: numbers at and beyond every limit, wrong types, nesting, nulls
HOSTILE_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.sampled_from([0, 1, -1, 999, 1000, MAX_TRAIN_TIMESTEPS, MAX_TRAIN_TIMESTEPS + 1, 2**63, -(2**63)]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e30, -1e30, 0.5, 1e-300]),
    st.text(max_size=5),
    st.lists(st.one_of(st.floats(0, 1), st.text(max_size=2), st.none()), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from([*KEYS, "_use_default_values"]), value=HOSTILE_VALUES)
def test_a_hostile_value_of_any_key_builds_a_usable_scheduler_or_names_the_file_and_the_key(
    tmp_path_factory: pytest.TempPathFactory, key: str, value: Any
) -> None:
    path = write_config(tmp_path_factory.mktemp("config"), json.dumps({key: value}))
    try:
        scheduler = DDIMScheduler.from_pretrained(path.parent)
    except ARGUMENT_ERRORS as error:
        assert str(error).startswith(f"{path}: ") and key in str(error), str(error)
        return
    scheduler.set_timesteps(1)  # what the constructor accepted, the schedule can use
    assert 0 <= int(scheduler.timesteps[0]) < scheduler.config.num_train_timesteps


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"steps_offset": 10**30}, "steps_offset=1000000000000000000000000000000 is out of range; allowed values are "),
        ({"steps_offset": -(10**30)}, "steps_offset=-1000000000000000000000000000000 is out of range"),
        ({"steps_offset": 1e30}, "steps_offset must be an int, got 1e+30"),
        ({"num_train_timesteps": 10**9}, "num_train_timesteps=1000000000 is out of range; allowed values are 1..1"),
        (
            {"trained_betas": ["abc"] * 1000},
            "trained_betas must be a 1-D sequence of real numbers, got a list of str",
        ),
        ({"trained_betas": "abc"}, "trained_betas must be a 1-D sequence of real numbers, got 'abc'"),
        ({"_use_default_values": 5}, "_use_default_values must be a list of config key names (strings), got 5"),
        ({"_use_default_values": [[1]]}, "_use_default_values must be a list of config key names"),
        ({"_use_default_values": "beta_start"}, "_use_default_values must be a list of config key names"),
    ],
)
def test_messages_name_the_file_the_key_and_what_is_allowed(
    config: dict[str, Any], message: str, tmp_path: Path
) -> None:
    path = write_config(tmp_path, json.dumps(config))
    with pytest.raises(ARGUMENT_ERRORS) as refused:
        DDIMScheduler.from_pretrained(tmp_path)
    assert str(refused.value).startswith(f"{path}: {message}")
    with pytest.raises(ARGUMENT_ERRORS):  # the inverse scheduler checks the same arguments
        DDIMInverseScheduler.from_pretrained(tmp_path)


def test_the_library_caps_the_training_timesteps_and_the_offset_at_the_constructor() -> None:
    DDIMScheduler(num_train_timesteps=MAX_TRAIN_TIMESTEPS)
    with pytest.raises(ValueError, match=r"num_train_timesteps=100001 is out of range; allowed values are 1..100000"):
        DDIMScheduler(num_train_timesteps=MAX_TRAIN_TIMESTEPS + 1)
    for offset in (0, 999):
        DDIMScheduler(steps_offset=offset)
    for offset in (-1, -1000, 1000, 10**30, -(10**30)):
        with pytest.raises(ValueError, match=rf"steps_offset={offset} is out of range; allowed values are 0..999"):
            DDIMScheduler(steps_offset=offset)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 100_000 + "]" * 100_000, "nests JSON 100000 levels deep; at most 16 allowed"),
        ('{"a": ' * 17 + "1" + "}" * 17, "nests JSON 17 levels deep"),
        ('{"num_train_timesteps": 1' + "0" * 5000 + "}", f"holds an integer of 5001 digits; at most {MAX_INT_DIGITS}"),
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "must hold a JSON object, got list"),
    ],
)
def test_deep_huge_and_broken_json_is_a_value_error_naming_the_file(text: str, message: str, tmp_path: Path) -> None:
    path = write_config(tmp_path, text)
    with pytest.raises(ValueError) as refused:
        DDIMScheduler.from_pretrained(tmp_path)
    assert str(path) in str(refused.value) and message in str(refused.value)


def test_brackets_inside_strings_are_not_nesting() -> None:
    assert json_depth(b'{"a": "[[[[{{{{\\"]]]", "b": [1, {"c": "}"}]}') == 3
    assert parse_json(b'{"a": "[[[[[[[[[[[[[[[[[[[[[[["}', "x", max_depth=1) == {"a": "[" * 23}


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.integers() | st.text(max_size=3), lambda inner: st.lists(inner, max_size=2)))
def test_the_depth_scan_agrees_with_the_parsed_value(value: Any) -> None:
    def depth(item: Any) -> int:
        return 1 + max(map(depth, item), default=0) if isinstance(item, list) else 0

    assert json_depth(json.dumps(value).encode()) == depth(value)


@pytest.mark.skipif(sys.platform != "linux", reason="FIFOs and /dev/zero are POSIX's")
def test_special_and_oversized_config_files_are_refused_without_reading(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UnreadableFileError, match="is a FIFO"):  # would block an ordinary open
        read_regular_file(fifo, 100, follow_symlinks=True)
    device = tmp_path / "device"
    device.symlink_to("/dev/zero")
    with pytest.raises(UnreadableFileError, match="is a character device"):  # would never end
        read_regular_file(device, 100, follow_symlinks=True)
    with pytest.raises(UnreadableFileError, match="is a symbolic link"):
        read_regular_file(device, 100)
    big = tmp_path / "scheduler_config.json"
    with big.open("wb") as handle:  # sparse: an unbounded read would take 8 GiB
        handle.truncate(8 << 30)
    with pytest.raises(ValueError, match=f"larger than {MAX_CONFIG_BYTES} bytes"):
        DDIMScheduler.from_pretrained(tmp_path)
    for name in ("fifo", "device"):
        with pytest.raises(ValueError):
            DDIMScheduler.from_pretrained(tmp_path / name)


def test_a_config_linked_from_a_cache_folder_is_read(tmp_path: Path) -> None:
    """The Hugging Face cache links snapshot files to blobs elsewhere: a link to a regular file is followed."""
    blob = tmp_path / "blobs" / "0123"
    blob.parent.mkdir()
    blob.write_text(json.dumps({"steps_offset": 1}))
    (tmp_path / "snapshot").mkdir()
    (tmp_path / "snapshot" / "scheduler_config.json").symlink_to(blob)
    assert DDIMScheduler.from_pretrained(tmp_path / "snapshot").config.steps_offset == 1
