"""One job at a time per shard directory: the lock, its refusal, stale locks, and waits that always end.

Run as a script, this file holds a directory's lock (``hold DIR``) or runs a slow job (``job DIR N DELAY``).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_shards import CLI_SAMPLE, TinyNet, make_model, run, shard_digests

from ddim.app.cli import main
from ddim.app.shards import DirectoryInUseError, ProcessGroup, ShardError, verify_shards
from ddim.app.shards.layout import LOCK_NAME, MANIFEST_NAME
from ddim.app.shards.lock import acquire_lock, check_lock, watch_lock
from ddim.app.shards.processes import die_with_parent, wait_for_shards

TIMEOUT = 120

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the lock's liveness checks are Linux's")


def script(*arguments: str, **env: str) -> subprocess.Popen[str]:
    """This file as a script in a subprocess, its output piped."""
    command = [sys.executable, __file__, *arguments]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env}
    )


def wait_for_lock(out: Path, process: subprocess.Popen[str]) -> dict[str, object]:
    """The owner written in ``out``'s lock once ``process`` has taken it."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        try:
            owner: dict[str, object] = json.loads((out / LOCK_NAME).read_text())
            if owner.get("pid") == process.pid:
                return owner
        except (OSError, ValueError):
            pass
        time.sleep(0.02)


def write_lock(out: Path, pid: int, host: str | None = None) -> None:
    out.mkdir(exist_ok=True)
    owner = {"pid": pid, "host": host or socket.gethostname(), "started": "2020-01-01T00:00:00+00:00"}
    (out / LOCK_NAME).write_text(json.dumps(owner))


def dead_pid() -> int:
    finished = subprocess.run([sys.executable, "-c", "pass"], check=True)
    assert finished.returncode == 0
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# --------------------------------------------------------------------------- refusal
def test_a_second_job_is_refused_at_once_and_the_first_finishes_intact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    job = script("job", str(out), "20", "1.0")  # about 20 s: still running when the second job is refused
    wait_for_lock(out, job)
    started = time.monotonic()
    with pytest.raises(DirectoryInUseError, match=f"{out} is in use by pid {job.pid} on {socket.gethostname()} since"):
        run(out)
    assert main([*CLI_SAMPLE, "--out-dir", str(out)]) == 2
    error = capsys.readouterr().err
    assert f"is in use by pid {job.pid}" in error and error.count("\n") == 1
    assert time.monotonic() - started < 10  # refused at once, not after waiting for the first job
    assert job.poll() is None, "the first job should still be running"
    assert job.wait(timeout=TIMEOUT) == 0, job.communicate()
    assert verify_shards(out).ok and not (out / LOCK_NAME).exists()
    run(tmp_path / "alone")
    assert shard_digests(out) == shard_digests(tmp_path / "alone")


def test_a_live_holder_is_refused_and_its_lock_is_taken_over_once_it_is_killed(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    holder = script("hold", str(out))
    wait_for_lock(out, holder)
    with pytest.raises(DirectoryInUseError, match="wait for that job to end, or stop it"):
        run(out)
    holder.kill()
    holder.wait(timeout=TIMEOUT)
    lines: list[str] = []
    run(out, log=lines.append)
    assert any(f"pid {holder.pid} on" in line and "is stale" in line for line in lines)
    assert verify_shards(out).ok and not (out / LOCK_NAME).exists()


def test_a_job_caught_writing_its_first_manifest_is_reported_as_in_use(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    holder = script("hold", str(out))
    wait_for_lock(out, holder)
    (out / ".manifest.json.x1y2.tmp").write_bytes(b"{")  # the holder's manifest, half written: no manifest.json yet
    try:
        with pytest.raises(DirectoryInUseError, match=f"in use by pid {holder.pid}"):
            run(out)
        assert sorted(os.listdir(out)) == sorted([LOCK_NAME, ".manifest.json.x1y2.tmp"])
    finally:
        holder.kill()
        holder.wait(timeout=TIMEOUT)


def test_a_foreign_folder_with_a_stale_lock_is_still_refused_and_its_files_kept(tmp_path: Path) -> None:
    out = tmp_path / "photos"
    write_lock(out, dead_pid())
    (out / "holiday.npz").write_bytes(b"precious")
    with pytest.raises(ShardError, match=r"not empty and holds no manifest\.json"):
        run(out)
    assert (out / "holiday.npz").read_bytes() == b"precious" and not (out / MANIFEST_NAME).exists()


def test_a_lock_of_another_host_is_never_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "run"
    write_lock(out, 12345, host="elsewhere")
    before = (out / LOCK_NAME).read_text()
    with pytest.raises(DirectoryInUseError, match=f"on elsewhere since .*remove {out / LOCK_NAME}"):
        run(out)
    assert (out / LOCK_NAME).read_text() == before and os.listdir(out) == [LOCK_NAME]


def test_an_unreadable_lock_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text("")
    with pytest.raises(DirectoryInUseError, match="starting now"):
        run(out)  # just created: its owner is about to write itself in
    os.utime(out / LOCK_NAME, (time.time() - 3600, time.time() - 3600))
    with pytest.raises(DirectoryInUseError, match=r"cannot be read; if no job is writing .* remove that file"):
        run(out)


# --------------------------------------------------------------------------- stale locks
@pytest.mark.parametrize("owner", ["dead", "alive-without-the-lock"])
def test_a_stale_lock_is_taken_over_and_reported_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], owner: str
) -> None:
    out = tmp_path / "run"
    pid = dead_pid() if owner == "dead" else os.getppid()  # a live pid reused by a process that holds no lock
    write_lock(out, pid)
    capsys.readouterr()
    assert main([*CLI_SAMPLE, "--out-dir", str(out)]) == 0
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"note: the lock of {out} (pid {pid} on ") and "is stale" in error
    assert "\n" not in error
    assert verify_shards(out).ok and not (out / LOCK_NAME).exists()


class Flaky(TinyNet):
    """TinyNet (the weights of make_model) whose 4th call crashes when ``crash`` is set."""

    def __init__(self, crash: bool) -> None:
        torch.manual_seed(1234)
        super().__init__()
        self.crash, self.calls = crash, 0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.crash and self.calls == 4:
            raise RuntimeError("model crashed")
        return super().forward(x, t)


def test_the_lock_is_released_when_the_job_fails(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="model crashed"):
        run(out, model=Flaky(crash=True).eval())
    assert not (out / LOCK_NAME).exists()
    assert run(out, model=Flaky(crash=False).eval()).generated == 20 and verify_shards(out).ok


def test_the_lock_is_released_when_the_resume_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(out, num_samples=4)
    with pytest.raises(ValueError, match="another configuration"):
        run(out, num_samples=4, seed=8)
    assert not (out / LOCK_NAME).exists()


# --------------------------------------------------------------------------- waits that end
def test_a_rank_waiting_for_shards_stops_when_the_jobs_lock_is_gone(tmp_path: Path) -> None:
    with acquire_lock(tmp_path) as lock:
        owner = lock.owner
        check_lock(tmp_path, owner)
    started = time.monotonic()
    with pytest.raises(ShardError, match=r"the lock of this job .* is gone"):
        wait_for_shards(tmp_path, [0, 1], check=lambda: check_lock(tmp_path, owner), poll_seconds=0.01)
    with acquire_lock(tmp_path), pytest.raises(ShardError, match="is gone"):  # another job's lock
        wait_for_shards(tmp_path, [0], check=lambda: check_lock(tmp_path, owner), poll_seconds=0.01)
    assert time.monotonic() - started < 5
    watched = watch_lock(tmp_path, owner, grace_seconds=0.3)  # what a rank uses: a short absence is forgiven
    watched()
    with pytest.raises(ShardError, match="is gone"):
        wait_for_shards(tmp_path, [0], check=watched, poll_seconds=0.01)
    assert time.monotonic() - started < 5


def test_a_rank_stops_when_its_launcher_is_gone() -> None:
    ProcessGroup(0, 1, 0, created=False).check_parent()
    ProcessGroup(1, 2, 1, created=False, parent_pid=os.getppid()).check_parent()
    with pytest.raises(ShardError, match=r"the launcher of this process .* has died"):
        ProcessGroup(1, 2, 1, created=False, parent_pid=os.getppid() + 100000).check_parent()


def test_a_worker_asks_for_sigterm_when_its_parent_dies() -> None:
    child = script("deathsig", LOCAL_RANK="0", WORLD_SIZE="2")
    stdout, stderr = child.communicate(timeout=TIMEOUT)
    assert child.returncode == 0, stderr
    assert stdout.split() == [str(int(signal.SIGTERM)), str(os.getpid())]


# --------------------------------------------------------------------------- the script
def hold(out_dir: str) -> None:
    """Hold ``out_dir``'s lock until killed."""
    with acquire_lock(Path(out_dir)):
        time.sleep(TIMEOUT)


def job(out_dir: str, num_samples: str, delay: str) -> None:
    run(Path(out_dir), num_samples=int(num_samples), model=make_model(float(delay)))


def deathsig() -> None:
    """Print the parent-death signal set by :func:`die_with_parent` and the parent pid it returns."""
    parent = die_with_parent()
    value = ctypes.c_int(0)
    ctypes.CDLL(None).prctl(2, ctypes.byref(value), 0, 0, 0)  # PR_GET_PDEATHSIG
    print(value.value, parent)


if __name__ == "__main__":
    {"hold": hold, "job": job, "deathsig": deathsig}[sys.argv[1]](*sys.argv[2:])
