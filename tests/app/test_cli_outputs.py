"""``ddim`` writes whole outputs or nothing: non-finite samples, a full disk, a read-only folder: one-line errors."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from unwritable import unwritable_folder

from ddim.app.cli import main
from ddim.app.digits import DigitsUNet, UNetConfig

#: Small, fast runs of every subcommand that writes files (OUT is replaced by the output path or folder).
RUNS: dict[str, list[str]] = {
    "sample": ["sample", "-n", "2", "--steps", "2", "-o", "OUT/s.png"],
    "invert": ["invert", "-n", "2", "--steps", "2", "-o", "OUT/i.png"],
    "interpolate": ["interpolate", "--frames", "2", "--steps", "2", "-o", "OUT/f.png"],
    "eval": ["eval", "--counts", "2:4", "--etas", "0", "--seeds", "1", "--out-dir", "OUT"],
    "train": ["train", "--steps", "1", "--channels", "8", "--batch-size", "2", "-o", "OUT/w.safetensors"],
}


def argv_for(command: str, folder: Path, *extra: str) -> list[str]:
    return [arg.replace("OUT", str(folder)) for arg in RUNS[command]] + ["--no-progress", *extra]


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def everything_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def overflowing_model(tmp_path: Path) -> Path:
    """A digits UNet of finite weights whose output overflows float32 (samples come out NaN)."""
    torch.manual_seed(0)
    model = DigitsUNet(UNetConfig(channels=8))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["out.weight"] = torch.full_like(state["out.weight"], 1e38)
    path = tmp_path / "models" / "overflow.safetensors"
    path.parent.mkdir()
    save_file(state, str(path))
    (path.with_suffix(".json")).write_text('{"unet": {"channels": 8}, "scheduler": {"clip_sample": false}}')
    return path


@pytest.mark.parametrize("command", ["sample", "invert", "interpolate", "eval"])
def test_non_finite_samples_fail_and_write_nothing(
    command: str, overflowing_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    code, err = cli(argv_for(command, out, "--model", str(overflowing_model)), capsys)
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "hold NaN or Inf values; nothing was written" in err
    assert everything_under(out) == []


def test_too_large_an_eta_is_reported_as_non_finite_samples(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = cli(
        ["sample", "-n", "2", "--steps", "3", "--eta", "50", "--no-progress", "-o", str(tmp_path / "s.png")], capsys
    )
    assert code == 2 and len(err.splitlines()) == 1 and "eta is too large" in err
    assert list(tmp_path.iterdir()) == []


FULL_DISK = """
import resource, signal, sys
import matplotlib.pyplot, PIL.PngImagePlugin, safetensors.torch  # imported (font cache built) before the limit
from ddim.app.cli import main
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.fault
@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(RUNS))
def test_a_full_disk_is_a_one_line_error_and_leaves_nothing(command: str, tmp_path: Path) -> None:
    resource = pytest.importorskip("resource")
    if not hasattr(resource, "RLIMIT_FSIZE"):
        pytest.skip("no RLIMIT_FSIZE on this platform")
    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", FULL_DISK, *argv_for(command, out)], capture_output=True, text=True, check=False
    )
    if result.returncode == 0:
        pytest.skip("the file size limit did not make the write fail here")
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert f"ddim {command}: error: cannot write" in result.stderr and "File too large" in result.stderr
    assert everything_under(out) == []


@pytest.mark.fault
@pytest.mark.parametrize("command", ["eval", "train"])
def test_a_write_failing_midway_leaves_none_of_the_files(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import safetensors.torch

    from ddim.app import evaluation

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    # the last file of each command: the earlier ones were already written when it fails
    monkeypatch.setattr(evaluation, "plot_report", disk_full)
    real_save = safetensors.torch.save_file
    monkeypatch.setattr(safetensors.torch, "save_file", lambda *a, **k: (real_save(*a, **k), disk_full()))
    out = tmp_path / "out"
    out.mkdir()
    (out / "table1.md").write_text("an earlier run")
    code, err = cli(argv_for(command, out), capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "No space left on device" in err
    assert everything_under(out) == ["table1.md"] and (out / "table1.md").read_text() == "an earlier run"


@pytest.mark.fault
def test_a_read_only_folder_is_refused_before_the_work(capsys: pytest.CaptureFixture[str]) -> None:
    with unwritable_folder() as folder:
        for command in RUNS:
            code, err = cli(argv_for(command, folder), capsys)
            assert code == 2 and len(err.splitlines()) == 1 and "is not writable" in err, err
        assert everything_under(folder) == []
