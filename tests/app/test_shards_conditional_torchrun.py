"""Class-conditional shard jobs under torchrun (gloo, CPU): 2 processes == 1, and SIGKILL of a rank then resume.

Run as a script, this file is the torchrun worker:
``python -m torch.distributed.run --standalone --nproc_per_node=K tests/app/test_shards_conditional_torchrun.py \
    OUT N BATCH DELAY PIDS``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_shards import make_scheduler, shard_digests
from test_shards_conditional import COND_SETTINGS, conditioning, make_conditional_model, run_conditional
from test_shards_torchrun import torchrun as shards_torchrun

from ddim.app.shards import generate_shards, load_samples, shard_file, verify_shards

TIMEOUT = 180

pytestmark = pytest.mark.slow


def worker(out_dir: str, num_samples: str, batch_size: str, delay: str, pid_dir: str) -> None:
    """One torchrun process: record its pid under ``pid_dir``, then generate its share of a uniform-label job."""
    Path(pid_dir, f"rank-{os.environ['RANK']}").write_text(str(os.getpid()))
    options = {**COND_SETTINGS, "num_samples": int(num_samples), "batch_size": int(batch_size)}
    generate_shards(
        make_conditional_model(float(delay)),
        make_scheduler(),
        out_dir,
        progress=False,
        conditioning=conditioning("uniform"),
        **options,
    )


def torchrun(tmp_path: Path, out: Path, num_samples: int, batch_size: int, delay: float = 0.0) -> subprocess.Popen[str]:
    return shards_torchrun(tmp_path, out, num_samples, batch_size, delay, worker_script=__file__)


def test_two_processes_write_exactly_the_conditional_shards_of_one_process(tmp_path: Path) -> None:
    single = tmp_path / "single"
    run_conditional(single, batch_size=16, conditioning=conditioning("uniform"))
    launched = torchrun(tmp_path, tmp_path / "double", COND_SETTINGS["num_samples"], batch_size=8)
    stdout, stderr = launched.communicate(timeout=TIMEOUT)
    assert launched.returncode == 0, stderr
    assert stdout.count("samples/s on 2 processes") == 1
    assert shard_digests(tmp_path / "double") == shard_digests(single)
    assert verify_shards(tmp_path / "double").ok
    assert load_samples(tmp_path / "double")["labels"].tolist() == load_samples(single)["labels"].tolist()


def test_sigkill_of_one_conditional_rank_then_rerun_gives_the_fresh_shards(tmp_path: Path) -> None:
    out, count = tmp_path / "killed", 64  # 4 shards of 16: rank 1 gets 1 and 3
    launched = torchrun(tmp_path, out, count, batch_size=8, delay=0.02)
    deadline = time.monotonic() + TIMEOUT
    while not (out / shard_file(1)).exists():  # rank 1 finished its first shard and is inside its second
        assert launched.poll() is None and time.monotonic() < deadline, launched.communicate()[1]
        time.sleep(0.02)
    os.kill(int((tmp_path / "pids" / "rank-1").read_text()), signal.SIGKILL)
    launched.communicate(timeout=TIMEOUT)
    assert launched.returncode != 0
    assert not verify_shards(out).ok

    summary = run_conditional(out, num_samples=count, batch_size=16, conditioning=conditioning("uniform"))
    assert 0 < summary.generated < count and summary.generated + summary.skipped == count
    assert verify_shards(out).ok
    run_conditional(tmp_path / "fresh", num_samples=count, conditioning=conditioning("uniform"))
    assert shard_digests(out) == shard_digests(tmp_path / "fresh")


if __name__ == "__main__":
    worker(*sys.argv[1:])
elif not __import__("torch").distributed.is_available():  # pragma: no cover
    pytest.skip("torch.distributed is not available in this build", allow_module_level=True)
