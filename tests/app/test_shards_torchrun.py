"""ddim.app.shards and `ddim sample --out-dir` under torchrun (gloo, CPU): 2 processes == 1, SIGKILL, resume, errors,
a killed launcher, a second job on a busy directory.

Run as a script, this file is the torchrun worker:
``python -m torch.distributed.run --standalone --nproc_per_node=K tests/app/test_shards_torchrun.py \
    OUT N BATCH DELAY PIDS``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_shards import CLI_SAMPLE, SETTINGS, make_model, make_scheduler, run, shard_digests

from ddim.app.shards import generate_shards, load_samples, read_manifest, shard_file, verify_shards

TIMEOUT = 180

pytestmark = pytest.mark.slow


def worker(out_dir: str, num_samples: str, batch_size: str, delay: str, pid_dir: str) -> None:
    """One torchrun process: record its pid under ``pid_dir``, then generate its share of the shards."""
    Path(pid_dir, f"rank-{os.environ['RANK']}").write_text(str(os.getpid()))
    options = {**SETTINGS, "num_samples": int(num_samples), "batch_size": int(batch_size)}
    generate_shards(make_model(float(delay)), make_scheduler(), out_dir, progress=False, **options)


def torchrun(
    tmp_path: Path, out: Path, num_samples: int, batch_size: int, delay: float = 0.0, worker_script: str = __file__
) -> subprocess.Popen[str]:
    """Two torchrun processes of ``worker_script`` (a file whose main is a worker taking these arguments)."""
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", worker_script]
    command += [str(out), str(num_samples), str(batch_size), str(delay), str(pid_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_two_processes_write_exactly_the_shards_of_one_process(tmp_path: Path) -> None:
    single = tmp_path / "single"
    run(single, batch_size=8)
    launched = torchrun(tmp_path, tmp_path / "double", SETTINGS["num_samples"], batch_size=4)
    stdout, stderr = launched.communicate(timeout=TIMEOUT)
    assert launched.returncode == 0, stderr
    assert stdout.count("samples/s on 2 processes") == 1  # the throughput line, from rank 0 only
    assert shard_digests(tmp_path / "double") == shard_digests(single)
    assert verify_shards(tmp_path / "double").ok
    assert read_manifest(tmp_path / "double")["runs"][-1]["world_size"] == 2
    both = load_samples(tmp_path / "double"), load_samples(single)
    assert all(np.array_equal(both[0][name], both[1][name]) for name in ("indices", "seeds", "samples"))


def test_sigkill_of_one_rank_then_rerun_gives_every_sample_once(tmp_path: Path) -> None:
    out, count = tmp_path / "killed", 64  # 8 shards of 8: rank 0 gets 0, 2, 4, 6 and rank 1 gets 1, 3, 5, 7
    launched = torchrun(tmp_path, out, count, batch_size=8, delay=0.05)
    deadline = time.monotonic() + TIMEOUT
    while not (out / shard_file(1)).exists():  # rank 1 finished its first shard and is inside its second
        assert launched.poll() is None and time.monotonic() < deadline, launched.communicate()[1]
        time.sleep(0.02)
    os.kill(int((tmp_path / "pids" / "rank-1").read_text()), signal.SIGKILL)
    launched.communicate(timeout=TIMEOUT)
    assert launched.returncode != 0
    assert not verify_shards(out).ok  # the kill left work undone

    summary = run(out, num_samples=count)  # the rerun, here with one process and another batch size
    assert 0 < summary.generated < count and summary.generated + summary.skipped == count
    assert verify_shards(out).ok
    samples = load_samples(out)
    assert samples["indices"].tolist() == list(range(count))
    assert len({row.tobytes() for row in samples["samples"]}) == count
    run(tmp_path / "fresh", num_samples=count)
    assert shard_digests(out) == shard_digests(tmp_path / "fresh")


def wait_for_ranks(tmp_path: Path, launched: subprocess.Popen[str], ready: Path) -> list[int]:
    """The pids of both ranks, once ``ready`` exists."""
    deadline = time.monotonic() + TIMEOUT
    pids = [tmp_path / "pids" / f"rank-{rank}" for rank in (0, 1)]
    while not (ready.exists() and all(p.exists() and p.read_text() for p in pids)):
        assert launched.poll() is None and time.monotonic() < deadline, launched.communicate()[1]
        time.sleep(0.02)
    return [int(p.read_text()) for p in pids]


def running(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie waiting for its reaper does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_killing_the_torchrun_parent_stops_its_workers_and_a_rerun_completes(tmp_path: Path) -> None:
    out, count = tmp_path / "orphaned", 64
    launched = torchrun(tmp_path, out, count, batch_size=8, delay=0.5)  # 4 s a shard, 4 shards a rank
    workers = wait_for_ranks(tmp_path, launched, out / shard_file(0))
    os.kill(launched.pid, signal.SIGKILL)  # the launcher only: its workers must not go on alone
    launched.wait(timeout=TIMEOUT)
    deadline = time.monotonic() + 5  # they would need 12 s more to finish on their own
    while any(running(pid) for pid in workers):
        assert time.monotonic() < deadline, f"workers still running after their launcher died: {workers}"
        time.sleep(0.05)
    launched.communicate(timeout=TIMEOUT)

    lines: list[str] = []
    summary = run(out, num_samples=count, log=lines.append)  # the rerun: nobody is writing the directory now
    assert summary.generated + summary.skipped == count
    assert any("is stale" in line for line in lines)  # rank 0 was killed holding the lock
    assert verify_shards(out).ok
    run(tmp_path / "fresh", num_samples=count)
    assert shard_digests(out) == shard_digests(tmp_path / "fresh")


def test_a_second_torchrun_job_on_a_busy_directory_is_refused_on_every_rank(tmp_path: Path) -> None:
    out, count = tmp_path / "busy", 64
    first = torchrun(tmp_path, out, count, batch_size=8, delay=0.5)  # about 16 s
    rank0 = wait_for_ranks(tmp_path, first, out / ".lock")[0]
    second = torchrun_cli(*CLI_SAMPLE, "--num-samples", str(count), "--out-dir", str(out))  # ends: no rank waits
    assert second.returncode != 0
    assert f"ddim sample: error: {out} is in use by pid {rank0} on" in second.stderr
    assert first.poll() is None, "the first job should still be running"
    stderr = first.communicate(timeout=TIMEOUT)[1]
    assert first.returncode == 0, stderr
    assert verify_shards(out).ok and not (out / ".lock").exists()


def torchrun_cli(*arguments: str) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc_per_node=2 -m ddim ARGUMENTS``."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ddim"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*command, *arguments], capture_output=True, text=True, env=env, timeout=TIMEOUT)


def test_torchrun_ddim_sample_equals_one_process(tmp_path: Path) -> None:
    from ddim.app.cli import main

    assert main([*CLI_SAMPLE, "--num-samples", "16", "--batch-size", "4", "--out-dir", str(tmp_path / "one")]) == 0
    done = torchrun_cli(*CLI_SAMPLE, "--num-samples", "16", "--batch-size", "8", "--out-dir", str(tmp_path / "two"))
    assert done.returncode == 0, done.stderr
    assert "16 samples in" in done.stdout and "on 2 processes" in done.stdout
    assert shard_digests(tmp_path / "two") == shard_digests(tmp_path / "one")
    assert len(shard_digests(tmp_path / "one")) == 4


def test_torchrun_more_processes_than_samples_is_a_clear_error(tmp_path: Path) -> None:
    done = torchrun_cli(*CLI_SAMPLE, "--num-samples", "1", "--batch-size", "4", "--out-dir", str(tmp_path / "out"))
    assert done.returncode != 0
    assert "ddim sample: error: world_size=2 is larger than num_samples=1" in done.stderr
    assert not (tmp_path / "out").exists()


if __name__ == "__main__":
    worker(*sys.argv[1:])
elif not __import__("torch").distributed.is_available():  # pragma: no cover
    pytest.skip("torch.distributed is not available in this build", allow_module_level=True)
