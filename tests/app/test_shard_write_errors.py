"""Writes that fail (a full disk, a file size limit, a read-only filesystem): one line, exit 2, nothing partial left,
and a resume afterwards ends bit-identical to a run that never failed.

The file size limit (RLIMIT_FSIZE, SIGXFSZ ignored: writes fail with EFBIG) runs everywhere on Linux; a full tmpfs
and a read-only mount need a private mount namespace (``unshare -rm``) and are skipped where there is none.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_shards import shard_digests
from unwritable import unwritable_folder

from ddim.app.cli import main
from ddim.app.shards import verify_shards
from ddim.app.shards.files import json_bytes
from ddim.app.shards.layout import LOCK_NAME, MANIFEST_NAME, shard_file

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="resource limits and mounts as on Linux"),
    pytest.mark.fault,
]

#: `ddim sample` arguments: big shards (64 samples, ~17 kB) next to a small manifest (~2 kB)...
BIG_SHARDS = ["sample", "-n", "128", "--shard-size", "64", "--micro-batch", "4", "--steps", "2", "--no-progress"]
#: ...and small shards (4 samples) whose 8 entries make the final manifest bigger than any of them.
SMALL_SHARDS = ["sample", "-n", "32", "--shard-size", "4", "--micro-batch", "4", "--steps", "2", "--no-progress"]
LIMITED = (
    "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
    "limit = int(sys.argv[1]); resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY)); "
    "from ddim.app.cli import main; sys.exit(main(sys.argv[2:]))"
)


def reference(tmp_path: Path, arguments: list[str]) -> Path:
    out = tmp_path / "reference"
    assert main([*arguments, "--out-dir", str(out)]) == 0
    return out


def leftovers(folder: Path) -> list[str]:
    """Temporary files and a lock left anywhere under ``folder``."""
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name == LOCK_NAME)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error" in line.lower() or "Traceback" in line]


def assert_resume_is_identical(out: Path, original: Path, arguments: list[str]) -> None:
    assert leftovers(out) == []
    assert main([*arguments, "--out-dir", str(out)]) == 0
    assert verify_shards(out).ok and shard_digests(out) == shard_digests(original)


# --------------------------------------------------------------------------- a file size limit (EFBIG)
@pytest.mark.parametrize("failing", ["first-shard", "final-manifest"])
def test_a_write_past_the_file_size_limit_is_one_line_and_the_resume_is_identical(tmp_path: Path, failing: str) -> None:
    arguments = BIG_SHARDS if failing == "first-shard" else SMALL_SHARDS
    original = reference(tmp_path, arguments)
    manifest = json_bytes({**json.loads((original / MANIFEST_NAME).read_text()), "shards": {}})
    first, final = len(manifest), (original / MANIFEST_NAME).stat().st_size
    shard = (original / shard_file(0)).stat().st_size
    if failing == "first-shard":
        assert final < shard
        limit, path = (final + shard) // 2, shard_file(0)  # the manifests fit, no shard does
    else:
        assert max(first, shard) < final
        limit, path = (max(first, shard) + final) // 2, MANIFEST_NAME  # every shard fits, the final manifest not
    out = tmp_path / "limited"
    command = [sys.executable, "-c", LIMITED, str(limit), *arguments, "--out-dir", str(out)]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 2, done.stderr
    assert error_lines(done.stderr) == [f"ddim sample: error: cannot write {out / path}: File too large"]
    assert_resume_is_identical(out, original, arguments)


# --------------------------------------------------------------------------- a disk that fills up mid-run (ENOSPC)
def test_a_disk_full_after_the_first_shard_is_one_line_and_the_resume_is_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    original = reference(tmp_path, SMALL_SHARDS)
    replace = os.replace

    def full_disk(source: Any, target: Any) -> None:
        if Path(target).name == shard_file(1):  # shard 0 is written, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        replace(source, target)

    monkeypatch.setattr(os, "replace", full_disk)
    out = tmp_path / "full"
    capsys.readouterr()
    assert main([*SMALL_SHARDS, "--out-dir", str(out)]) == 2
    error = capsys.readouterr().err
    assert error == f"ddim sample: error: cannot write {out / shard_file(1)}: No space left on device\n"
    assert (out / shard_file(0)).exists() and not (out / shard_file(1)).exists()
    monkeypatch.setattr(os, "replace", replace)
    assert_resume_is_identical(out, original, SMALL_SHARDS)


def test_a_disk_full_while_writing_the_pngs_is_one_line_and_the_resume_is_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = [*SMALL_SHARDS, "--png"]
    original = reference(tmp_path, arguments)
    replace = os.replace

    def full_disk(source: Any, target: Any) -> None:
        if Path(target).name == "000006.png":  # the second shard's third image
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        replace(source, target)

    monkeypatch.setattr(os, "replace", full_disk)
    out = tmp_path / "full"
    capsys.readouterr()
    assert main([*arguments, "--out-dir", str(out)]) == 2
    error = capsys.readouterr().err
    assert error == f"ddim sample: error: cannot write {out / 'images' / '000006.png'}: No space left on device\n"
    assert (out / shard_file(0)).exists() and not (out / shard_file(1)).exists()
    monkeypatch.setattr(os, "replace", replace)
    assert_resume_is_identical(out, original, arguments)
    images = sorted(p.name for p in (out / "images").iterdir())
    assert images == sorted(p.name for p in (original / "images").iterdir()) and len(images) == 32
    assert all((out / "images" / n).read_bytes() == (original / "images" / n).read_bytes() for n in images)


def test_a_merge_onto_a_read_only_filesystem_is_one_line_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    original = reference(tmp_path, SMALL_SHARDS)
    target = tmp_path / "merged" / "all.npz"
    target.parent.mkdir()

    def read_only(source: Any, destination: Any) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(os, "replace", read_only)
    monkeypatch.setattr(os, "link", read_only)  # a merge to a new file links it into place
    capsys.readouterr()
    assert main(["merge", str(original), "-o", str(target)]) == 2
    assert capsys.readouterr().err == f"ddim merge: error: cannot write {target}: Read-only file system\n"
    assert os.listdir(target.parent) == []


# --------------------------------------------------------------------------- real mounts, in a private namespace
def in_mount_namespace(tmp_path: Path, mount_options: str, command: list[str]) -> tuple[int, str, Path]:
    """Run ``command`` with a fresh tmpfs (``mount_options``) on ``tmp_path/mnt``; exit code, stderr and a copy
    of what it left in the mount (``tmp_path/copy``). Skips the test where the tmpfs cannot be mounted."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    mount, copy = tmp_path / "mnt", tmp_path / "copy"
    mount.mkdir()
    script = (
        'mount -t tmpfs -o "$1" tmpfs "$0" || exit 99; shift; '
        '"$@" 2> "$0/../stderr"; echo $? > "$0/../rc"; cp -a "$0" "$0/../copy"'
    )
    # a user namespace (-r) where unprivileged ones are allowed; else root's own mount namespace (CAP_SYS_ADMIN)
    tries = [["unshare", "-rm"], *([["unshare", "-m"]] if os.geteuid() == 0 else [])]
    failures = []
    for unshare in tries:
        done = subprocess.run(
            [*unshare, "sh", "-c", script, str(mount), mount_options, *command],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        if done.returncode == 0 and (tmp_path / "rc").exists():
            return int((tmp_path / "rc").read_text()), (tmp_path / "stderr").read_text(), copy
        failures.append(f"{' '.join(unshare)}: {done.stderr.strip()[:150] or f'exit {done.returncode}'}")
    pytest.skip(f"cannot mount a tmpfs in a private mount namespace ({'; '.join(failures)})")


def test_a_full_tmpfs_is_one_line_and_the_resume_is_identical(tmp_path: Path) -> None:
    original = reference(tmp_path, BIG_SHARDS)
    run = [sys.executable, "-m", "ddim", *BIG_SHARDS, "--out-dir", str(tmp_path / "mnt" / "run")]
    code, stderr, copy = in_mount_namespace(tmp_path, "size=24k", run)  # the manifest fits, a 17 kB shard not
    assert code == 2, stderr
    assert error_lines(stderr) == [
        f"ddim sample: error: cannot write {tmp_path / 'mnt' / 'run' / shard_file(0)}: No space left on device"
    ]
    assert_resume_is_identical(copy / "run", original, BIG_SHARDS)


def test_a_merge_onto_a_read_only_mount_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    original = reference(tmp_path, SMALL_SHARDS)
    target = tmp_path / "mnt" / "all.npz"
    code, stderr, copy = in_mount_namespace(
        tmp_path, "ro", [sys.executable, "-m", "ddim", "merge", str(original), "-o", str(target)]
    )
    assert code == 2, stderr
    (line,) = error_lines(stderr)  # the CLI's check of the folder, or the write itself
    assert line.startswith("ddim merge: error: cannot write ") and str(target) in line
    assert line.endswith(("Read-only file system", "is not writable"))
    assert os.listdir(copy) == []


# --------------------------------------------------------------------------- unwritable targets, also as root
def test_a_merge_into_an_unwritable_folder_is_one_line_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    original = reference(tmp_path, SMALL_SHARDS)
    with unwritable_folder() as folder:
        capsys.readouterr()
        assert main(["merge", str(original), "-o", str(folder / "all.npz")]) == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith("ddim merge: error: cannot write ") and str(folder / "all.npz") in line
        assert line.endswith(("is not writable", "Permission denied")) and os.listdir(folder) == []


def test_a_run_into_an_unwritable_folder_is_one_line_and_leaves_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with unwritable_folder() as folder:
        capsys.readouterr()
        assert main([*SMALL_SHARDS, "--out-dir", str(folder / "run")]) == 2
        assert capsys.readouterr().err == (
            f"ddim sample: error: {str(folder / 'run')!r} cannot be written: Permission denied\n"
        )
        assert os.listdir(folder) == []


def test_a_run_below_a_file_is_one_line_and_leaves_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A folder replaced by a file (ENOTDIR): root cannot write through it either."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"mine")
    capsys.readouterr()
    assert main([*SMALL_SHARDS, "--out-dir", str(blocker / "run")]) == 2
    assert capsys.readouterr().err == (
        f"ddim sample: error: {str(blocker / 'run')!r} cannot be written: Not a directory\n"
    )
    assert main(["merge", str(blocker), "-o", str(tmp_path / "all.npz")]) == 2
    assert len(capsys.readouterr().err.splitlines()) == 1
    assert main(["merge", str(reference(tmp_path, SMALL_SHARDS)), "-o", str(blocker / "all.npz")]) == 2
    assert len(capsys.readouterr().err.splitlines()) == 1
    assert blocker.read_bytes() == b"mine" and sorted(os.listdir(tmp_path)) == ["not-a-folder", "reference"]
