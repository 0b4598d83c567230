"""`ddim sample --out-dir`, `ddim verify` and `ddim merge` on the command line, and the README's scale-out examples."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from test_shards import CLI_SAMPLE, file_digests, shard_digests

from ddim.app.shards import read_manifest, shard_file, verify_shards


def test_cli_sample_verify_merge_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ddim.app.cli import main

    out = tmp_path / "shards"
    assert main([*CLI_SAMPLE, "--batch-size", "8", "--out-dir", str(out)]) == 0
    assert "8 samples in" in capsys.readouterr().out
    assert read_manifest(out)["config"]["model"]["description"] == "embedded digits model"
    assert main(["verify", str(out)]) == 0
    assert capsys.readouterr().out.rstrip().endswith("OK")
    original = shard_digests(out)

    shard = out / shard_file(0)
    shard.write_bytes(shard.read_bytes()[:-10])
    assert main(["verify", str(out)]) == 1
    assert "corrupt shard shard-00000.npz: checksum mismatch" in capsys.readouterr().out
    assert main(["merge", str(out), "-o", str(tmp_path / "all.npz")]) == 1
    assert not (tmp_path / "all.npz").exists()
    assert main([*CLI_SAMPLE, "--batch-size", "4", "--out-dir", str(out)]) == 0  # resume, another batch size
    assert "4 already complete" in capsys.readouterr().out
    assert shard_digests(out) == original

    assert main(["merge", str(out), "-o", str(tmp_path / "all.npz")]) == 0
    with np.load(tmp_path / "all.npz", allow_pickle=False) as merged:
        assert merged["samples"].shape == (8, 1, 8, 8) and merged["indices"].tolist() == list(range(8))
    capsys.readouterr()
    assert main(["merge", str(out), "-o", str(tmp_path / "all.npz")]) == 2
    assert "exists" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--eta", "0.5"], "another configuration (eta: manifest has 0.0, this run has 0.5)"),
        (["--batch-size", "6"], "--batch-size 6 must be a multiple of --micro-batch 4"),
    ],
)
def test_cli_sample_errors_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    from ddim.app.cli import main

    out = tmp_path / "shards"
    assert main([*CLI_SAMPLE, "--batch-size", "8", "--out-dir", str(out)]) == 0
    before = file_digests(out)
    capsys.readouterr()
    assert main([*CLI_SAMPLE, "--batch-size", "8", "--out-dir", str(out), *extra]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error
    assert file_digests(out) == before


def test_cli_verify_of_a_foreign_directory_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ddim.app.cli import main

    assert main(["verify", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_cli_refuses_zero_samples(tmp_path: Path) -> None:
    from ddim.app.cli import main

    try:  # argparse's own errors exit; ddim's parser may return the code instead
        code: object = main(["sample", "--num-samples", "0", "--out-dir", str(tmp_path / "out")])
    except SystemExit as exit_info:
        code = exit_info.code
    assert code == 2
    assert not (tmp_path / "out").exists()


def test_readme_scale_out_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("<!-- example:scale-out") : readme.index("<!-- /example:scale-out")]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    assert verify_shards(tmp_path / "cells" / "S10-eta0").ok
