"""Shard folders whose files are not what they claim: FIFOs, device links, links leaving the folder, huge layouts,
and two merges racing for one output. Every case ends promptly (no read blocks, none is unbounded) with a report
or one line; none is blessed."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_shard_faults import bless, cli, copy_of, edit_manifest
from test_shards import run, shard_digests

from ddim.app.atomic import write_bytes_exclusively
from ddim.app.seeding import SEED_RULE
from ddim.app.shards import OutputExistsError, ShardError, merge_shards, record_file, shard_file, verify_shards
from ddim.app.shards import verify as verify_module
from ddim.app.shards.files import read_npz
from ddim.app.shards.layout import LOCK_NAME, MANIFEST_NAME, MAX_SHARDS
from ddim.app.shards.lock import acquire_lock
from ddim.app.shards.schema import check_manifest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="FIFOs and /dev/zero are POSIX's")

#: A call that blocks on a FIFO or reads /dev/zero would take forever: each is cut at this many seconds.
PROMPT_SECONDS = 20


@pytest.fixture(scope="module")
def untouched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete run of the shared settings (3 shards)."""
    out = tmp_path_factory.mktemp("untouched") / "run"
    run(out)
    return out


@contextlib.contextmanager
def prompt() -> Iterator[None]:
    """Fail (instead of hanging) when the block runs longer than ``PROMPT_SECONDS``."""

    def hung(*_: object) -> None:
        raise TimeoutError(f"still running after {PROMPT_SECONDS} s: a read blocked or ran without bound")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(PROMPT_SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def make_fifo(path: Path) -> None:
    path.unlink(missing_ok=True)
    os.mkfifo(path)


def link_to(path: Path, target: str | Path) -> None:
    path.unlink(missing_ok=True)
    path.symlink_to(target)


def drop_from_manifest(out: Path, shard_id: int) -> None:
    edit_manifest(out, lambda manifest: manifest["shards"].pop(str(shard_id)))


# --------------------------------------------------------------------------- the lock file
@pytest.mark.parametrize("kind", ["fifo", "device", "link-out"])
def test_a_lock_that_is_not_a_regular_file_is_reported_by_verify_and_refused_by_a_resume(
    kind: str, untouched: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = copy_of(untouched, tmp_path)
    outside = tmp_path / "elsewhere.json"
    outside.write_text(json.dumps({"pid": os.getpid(), "host": "x", "started": "now"}))
    {"fifo": lambda: make_fifo(out / LOCK_NAME), "device": lambda: link_to(out / LOCK_NAME, "/dev/zero")}.get(
        kind, lambda: link_to(out / LOCK_NAME, outside)
    )()
    with prompt():
        code, report, _ = cli(capsys, "verify", str(out))
        assert code == 1 and f"stray files, not part of the run: {LOCK_NAME}" in report
        assert "in use by" not in report  # an owner is never read through it
        with pytest.raises(ShardError, match=r"cannot be locked: .*\.lock is a (FIFO|symbolic link)"):
            run(out)
        code, _, error = cli(capsys, "sample", "--out-dir", str(out), "--num-samples", "4", "--no-progress")
    assert code == 2 and len(error.strip().splitlines()) == 1 and "remove it" in error


def test_a_lock_of_a_live_process_that_holds_no_flock_is_not_called_gone(tmp_path: Path) -> None:
    """Our own pid runs, but no flock is held on the file: stale, and said so without claiming the process died."""
    out = tmp_path / "out"
    out.mkdir()
    owner = {"pid": os.getpid(), "host": os.uname().nodename, "started": "2020-01-01T00:00:00+00:00"}
    (out / LOCK_NAME).write_text(json.dumps(owner))
    lines: list[str] = []
    with acquire_lock(out, lines.append):
        pass
    assert len(lines) == 1 and "is stale, no process holds it" in lines[0] and "gone" not in lines[0]


# --------------------------------------------------------------------------- shards and records
@pytest.mark.parametrize(
    ("kind", "why"),
    [
        ("fifo", "is a FIFO (named pipe), not a shard file"),
        ("device", "is a symbolic link, not a shard file"),
        ("link-out", "is a symbolic link, not a shard file"),
    ],
)
def test_a_shard_that_is_not_a_regular_file_is_corrupt_and_redone(
    kind: str, why: str, untouched: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = copy_of(untouched, tmp_path)
    outside = tmp_path / "copy.npz"
    outside.write_bytes((out / shard_file(1)).read_bytes())  # the right bytes, but outside the folder
    {"fifo": lambda: make_fifo(out / shard_file(1)), "device": lambda: link_to(out / shard_file(1), "/dev/zero")}.get(
        kind, lambda: link_to(out / shard_file(1), outside)
    )()
    with prompt():
        assert verify_shards(out).corrupt == {1: why}
        assert cli(capsys, "merge", str(out), "-o", str(tmp_path / "all.npz"))[0] == 1
        run(out)  # the resume redoes shard 1
    assert not (out / shard_file(1)).is_symlink() and shard_digests(out) == shard_digests(untouched)
    assert outside.exists()  # a link's target is never touched


@pytest.mark.parametrize("kind", ["fifo", "device", "huge"])
def test_a_record_that_is_not_a_small_regular_file_is_ignored(kind: str, untouched: Path, tmp_path: Path) -> None:
    out = copy_of(untouched, tmp_path)
    drop_from_manifest(out, 1)  # a record is read only for a shard the manifest does not list
    record = out / record_file(1)
    if kind == "fifo":
        make_fifo(record)
    elif kind == "device":
        link_to(record, "/dev/zero")
    else:
        with record.open("wb") as handle:  # sparse: 8 GiB that a read without bound would take
            handle.truncate(8 << 30)
    with prompt():
        assert verify_shards(out).corrupt == {1: "no checksum recorded (the run writing it did not finish it)"}
        run(out)
    assert shard_digests(out) == shard_digests(untouched) and not os.path.lexists(record)


def test_a_manifest_that_is_a_fifo_or_a_device_is_one_line(
    untouched: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = copy_of(untouched, tmp_path)
    for make in (make_fifo, lambda path: link_to(path, "/dev/zero")):
        make(out / MANIFEST_NAME)
        with prompt():
            code, _, error = cli(capsys, "verify", str(out))
        assert code == 2 and len(error.strip().splitlines()) == 1
        assert "FIFO (named pipe), not a regular file" in error or "is a symbolic link" in error


def npy_claiming(shape: tuple[int, ...]) -> bytes:
    """A ``.npy`` whose header declares ``shape`` (float32) but which holds 16 bytes of data."""
    buffer = io.BytesIO()
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + bytes(16)


def test_a_blessed_shard_whose_header_claims_a_huge_array_is_corrupt_without_allocating_it(
    untouched: Path, tmp_path: Path
) -> None:
    out = copy_of(untouched, tmp_path)
    arrays = read_npz((out / shard_file(1)).read_bytes())
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in ("indices", "seeds"):
            archive.writestr(f"{name}.npy", npz_member(arrays[name]))
        archive.writestr("samples.npy", npy_claiming((10**12, 3)))  # 12 TB declared
    (out / shard_file(1)).write_bytes(buffer.getvalue())
    record = bless(out, 1)  # the tamperer also fixes the manifest's checksum
    edit_manifest(out, lambda manifest: manifest["shards"].__setitem__("1", record))
    with prompt():
        why = verify_shards(out).corrupt[1]
    assert why.startswith("unreadable: member 'samples.npy' declares (1000000000000, 3) float32, more than it holds")
    compressed = io.BytesIO()
    with zipfile.ZipFile(compressed, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("samples.npy", npz_member(np.zeros(10**5, np.float32)))  # a compression bomb in small
    with pytest.raises(ValueError, match=r"is not an uncompressed \.npy array"):
        read_npz(compressed.getvalue())


def npz_member(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=False)
    return buffer.getvalue()


# --------------------------------------------------------------------------- the layout
def test_a_layout_of_billions_of_shards_is_refused_at_once(
    untouched: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = copy_of(untouched, tmp_path)

    def huge(manifest: dict[str, object]) -> None:
        manifest["config"]["num_samples"] = 2**32  # type: ignore[index]
        manifest["config"]["shard_size"] = 1  # type: ignore[index]

    edit_manifest(out, huge)
    with prompt():
        code, _, error = cli(capsys, "verify", str(out))
    assert code == 2 and len(error.strip().splitlines()) == 1
    assert f"makes 4294967296 shards; at most {MAX_SHARDS}" in error and "manifest.json is damaged: config" in error


@settings(max_examples=200, deadline=None)
@given(num_samples=st.integers(1, 2**32), shard_size=st.integers(1, 2**63 - 1))
def test_a_manifest_layout_is_accepted_only_within_the_shard_bound(num_samples: int, shard_size: int) -> None:
    """Any sizes the schema's integer bounds let through: accepted with at most MAX_SHARDS shards, else refused."""
    manifest = {
        "format": "ddim-shards/1",
        "config": {
            "num_samples": num_samples,
            "shard_size": shard_size,
            "seed": 0,
            "sample_shape": [1],
            "seed_rule": SEED_RULE,
        },
        "shards": {},
        "runs": [],
    }
    shards = -(-num_samples // shard_size)
    if shards <= MAX_SHARDS:
        assert check_manifest(manifest, Path("m.json")) is manifest
    else:
        with pytest.raises(ShardError, match=f"makes {shards} shards"):
            check_manifest(manifest, Path("m.json"))


def test_a_long_run_of_missing_shards_is_one_short_line(untouched: Path, tmp_path: Path) -> None:
    out = copy_of(untouched, tmp_path)
    for shard_id in range(3):
        (out / shard_file(shard_id)).unlink()
    assert "missing shards: shard-00000.npz..shard-00002.npz (3)" in verify_shards(out).describe()


# --------------------------------------------------------------------------- merges racing for one output
def test_a_merge_whose_output_appears_meanwhile_refuses_and_leaves_the_other(
    untouched: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The other merge writes the file between our exists check and our write: we refuse, and never say wrote."""
    target = tmp_path / "all.npz"
    original = verify_module.npz_bytes

    def other_merge_wins(arrays: dict[str, object]) -> bytes:
        target.write_bytes(b"the other merge's file")
        return original(arrays)  # type: ignore[arg-type]

    monkeypatch.setattr(verify_module, "npz_bytes", other_merge_wins)
    with pytest.raises(OutputExistsError):
        merge_shards(untouched, target)
    assert target.read_bytes() == b"the other merge's file"
    target.unlink()
    code, written, error = cli(capsys, "merge", str(untouched), "-o", str(target))
    assert code == 2 and "wrote" not in written and target.read_bytes() == b"the other merge's file"
    assert error.count("\n") == 1 and "pass --force to replace it" in error and "overwrite" not in error
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def race_to_write(target: Path, label: str, barrier: threading.Barrier, outcomes: list[str]) -> None:
    barrier.wait()
    try:
        write_bytes_exclusively(target, label.encode() * 1000)
        outcomes.append(label)
    except FileExistsError:
        outcomes.append("refused")


def test_of_many_concurrent_exclusive_writes_exactly_one_wins(tmp_path: Path) -> None:
    for round_ in range(10):
        target = tmp_path / f"out-{round_}.npz"
        barrier = threading.Barrier(4)
        outcomes: list[str] = []
        threads = [threading.Thread(target=race_to_write, args=(target, f"w{i}", barrier, outcomes)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        winners = [label for label in outcomes if label != "refused"]
        assert len(winners) == 1 and target.read_bytes() == winners[0].encode() * 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"out-{i}.npz" for i in range(10))
