"""`ddim sample --digit ... --out-dir`, `ddim merge --format npz | adm | png-folder` and `ddim eval --from-shards`."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_shards import CLI_SAMPLE, file_digests

from ddim.app.shards import OutputExistsError, load_samples, read_manifest, verify_shards
from ddim.app.shards.export import export_samples, nhwc_uint8

CLI_DIGITS = [*CLI_SAMPLE, "--batch-size", "4", "--guidance-scale", "2", "--guidance-rescale", "0.5"]


def main(*arguments: str) -> int:
    from ddim.app.cli import main as cli_main

    try:  # argparse's own errors exit; ddim's parser returns the code instead
        return cli_main(list(arguments))
    except SystemExit as exit_info:  # pragma: no cover - depends on the parser
        return int(exit_info.code or 0)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`ddim sample --digit 3 7 -n 8 --out-dir` with feature statistics."""
    out = tmp_path_factory.mktemp("digits") / "run"
    assert main(*CLI_DIGITS, "--digit", "3", "7", "--fid-stats", "--out-dir", str(out)) == 0
    return out


def test_cli_digits_out_dir_records_labels_and_guidance(digits_run: Path) -> None:
    merged = load_samples(digits_run)
    assert merged["labels"].tolist() == [3, 7] * 4
    config = read_manifest(digits_run)["config"]
    assert config["conditioning"]["classes"] == [3, 7] and config["conditioning"]["label_rule"] == "cycle"
    assert config["conditioning"]["guidance_scale"] == 2.0 and config["conditioning"]["guidance_rescale"] == 0.5
    assert config["model"]["description"] == "embedded class-conditional digits model"
    assert "fid_stats" in config
    assert verify_shards(digits_run).ok


def test_cli_random_and_all_digits(tmp_path: Path) -> None:
    assert main(*CLI_DIGITS, "--digit", "random", "--out-dir", str(tmp_path / "random")) == 0
    assert main(*CLI_DIGITS, "--digit", "all", "--out-dir", str(tmp_path / "all")) == 0
    assert read_manifest(tmp_path / "random")["config"]["conditioning"]["label_rule"] == "uniform"
    assert load_samples(tmp_path / "all")["labels"].tolist() == list(range(8))
    assert main("verify", str(tmp_path / "random")) == 0


def test_cli_cfg_pp_shard_job_records_its_kind_and_refuses_a_resume_with_another(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 4 steps: with 2, zero terminal SNR makes the first step's eps the input and the last renoises with weight 0,
    # so CFG++ and CFG would coincide exactly
    base = [*CLI_SAMPLE, "--steps", "4", "--batch-size", "4", "--digit", "all", "--guidance-scale", "0.6"]
    out, plain = tmp_path / "cfgpp", tmp_path / "cfg"
    assert main(*base, "--guidance", "cfg++", "--out-dir", str(out)) == 0
    recorded = read_manifest(out)["config"]["conditioning"]
    assert recorded["guidance_kind"] == "cfg++"
    assert recorded["guidance_scale"] == 0.6 and recorded["guidance_rescale"] == 0.0
    assert verify_shards(out).ok
    assert main(*base, "--guidance", "cfg", "--guidance-rescale", "0", "--out-dir", str(plain)) == 0
    # CFG++ renoises with the unconditional prediction: the same scale as plain CFG gives other samples
    assert not np.array_equal(load_samples(out)["samples"], load_samples(plain)["samples"])
    before = file_digests(out)
    capsys.readouterr()
    assert main(*base, "--guidance", "cfg", "--guidance-rescale", "0", "--out-dir", str(out)) == 2
    error = capsys.readouterr().err.strip()
    assert "another configuration (conditioning" in error and "\n" not in error
    assert file_digests(out) == before


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--digit", "random", "3"], "--digit random draws a digit per sample; give it alone"),
        (["--digit", "random"], "--digit random needs --out-dir"),
        (["--guidance", "cfg++"], "--guidance needs --digit"),
        (["--digit", "3", "--guidance", "cfg++"], "--guidance-rescale is for --guidance cfg; CFG++ has no rescale"),
        (["--digit", "11"], "--digit"),
    ],
)
def test_cli_digit_errors_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    out = ["--out-dir", str(tmp_path / "out")] if "needs --out-dir" not in message else []
    base = CLI_DIGITS if "--digit" in arguments else [*CLI_SAMPLE, "--batch-size", "4"]
    assert main(*base, *arguments, *out) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error
    assert not (tmp_path / "out").exists()


def test_merge_npz_carries_the_labels(digits_run: Path, tmp_path: Path) -> None:
    assert main("merge", str(digits_run), "-o", str(tmp_path / "all.npz")) == 0
    with np.load(tmp_path / "all.npz", allow_pickle=False) as archive:
        assert sorted(archive.files) == ["indices", "labels", "samples", "seeds"]
        assert archive["labels"].tolist() == [3, 7] * 4 and archive["samples"].shape == (8, 1, 8, 8)


def test_merge_adm_writes_uint8_nhwc_and_labels(digits_run: Path, tmp_path: Path) -> None:
    target = tmp_path / "adm.npz"
    assert main("merge", str(digits_run), "-o", str(target), "--format", "adm") == 0
    merged = load_samples(digits_run)
    with np.load(target, allow_pickle=False) as archive:
        assert sorted(archive.files) == ["arr_0", "arr_1"]
        pixels, labels = archive["arr_0"], archive["arr_1"]
    assert pixels.dtype == np.uint8 and pixels.shape == (8, 8, 8, 1)
    expected = np.clip(np.round((merged["samples"].astype(np.float64) + 1) * 127.5), 0, 255)  # the rule, written out
    assert np.array_equal(pixels[..., 0], expected[:, 0].astype(np.uint8))
    assert labels.tolist() == merged["labels"].tolist()
    assert main("merge", str(digits_run), "-o", str(target), "--format", "adm") == 2  # exists, no --force


def test_nhwc_uint8_keeps_rgb_channels_in_order() -> None:
    samples = np.zeros((2, 3, 4, 5), dtype=np.float32)
    samples[:, 0], samples[:, 1], samples[:, 2] = -1.0, 0.0, 1.0
    pixels = nhwc_uint8(samples)
    assert pixels.shape == (2, 4, 5, 3)
    assert pixels[0, 0, 0].tolist() == [0, 128, 255]  # round(127.5) = 128 (half to even: 127.5 -> 128)


def test_merge_png_folder_writes_one_png_per_sample_and_the_labels(digits_run: Path, tmp_path: Path) -> None:
    target = tmp_path / "pngs"
    assert main("merge", str(digits_run), "-o", str(target), "--format", "png-folder") == 0
    names = sorted(p.name for p in target.iterdir())
    assert names == [f"{i:06d}.png" for i in range(8)] + ["labels.csv"]
    merged = load_samples(digits_run)
    pixels = nhwc_uint8(merged["samples"])
    image = pytest.importorskip("PIL.Image")
    for i in range(8):
        assert np.array_equal(np.asarray(image.open(target / f"{i:06d}.png")), pixels[i, ..., 0])
    with (target / "labels.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(int(r["index"]), int(r["label"])) for r in rows] == list(enumerate(merged["labels"].tolist()))
    before = file_digests(target)
    assert main("merge", str(digits_run), "-o", str(target), "--format", "png-folder") == 2  # exists, no --force
    assert file_digests(target) == before
    (target / "stale.png").write_bytes(b"old")
    assert main("merge", str(digits_run), "-o", str(target), "--format", "png-folder", "--force") == 0
    assert file_digests(target) == before  # replaced whole: the stale file is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pngs"]  # no hidden folder left


def test_export_refuses_an_existing_output_of_every_format(digits_run: Path, tmp_path: Path) -> None:
    for form in ("npz", "adm", "png-folder"):
        target = tmp_path / f"taken-{form}"
        target.write_bytes(b"someone else's")
        with pytest.raises(OutputExistsError, match="exists; pass overwrite=True to replace it"):
            export_samples(digits_run, target, form)
        assert target.read_bytes() == b"someone else's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken-adm", "taken-npz", "taken-png-folder"]


def test_png_folder_leaves_nothing_when_the_shards_do_not_verify(digits_run: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in digits_run.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    shard = broken / "shard-00001.npz"
    shard.write_bytes(shard.read_bytes()[:-5])
    with pytest.raises(ValueError, match="checksum mismatch"):
        export_samples(broken, tmp_path / "pngs", "png-folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]
    with pytest.raises(ValueError, match="format='tiff' is not supported"):
        export_samples(digits_run, tmp_path / "x", "tiff")


def test_eval_from_shards_prints_fid_overall_and_per_digit(
    digits_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ddim.app.digits.fid import DigitsFID

    assert main("eval", "--from-shards", str(digits_run), "--out-dir", str(tmp_path)) == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "shard_fid.json").read_text())
    assert result["num_samples"] == 8 and sorted(result["per_digit"]) == ["3", "7"]
    assert f"digits-FID {result['fid']:.4f} (8 samples, 2 shards)" in printed
    # the independent path: DigitsFID (features of all samples in one call, numpy's mean and covariance)
    direct = DigitsFID()(torch.from_numpy(load_samples(digits_run)["samples"]))
    assert abs(result["fid"] - direct) <= 1e-6 * direct


def test_eval_from_shards_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(*CLI_SAMPLE, "--batch-size", "4", "--out-dir", str(tmp_path / "plain")) == 0
    capsys.readouterr()
    assert main("eval", "--from-shards", str(tmp_path / "plain")) == 2
    assert "without feature statistics (rerun with --fid-stats)" in capsys.readouterr().err
    assert main("eval", "--from-shards", str(tmp_path / "plain"), "--quick") == 2
    assert "--quick configures sampling" in capsys.readouterr().err


@pytest.mark.slow
def test_docs_conditional_scale_out_example_runs_at_a_small_n(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "docs" / "scale-out.md").read_text()
    start, stop = (
        readme.index("<!-- example:conditional-scale-out"),
        readme.index("<!-- /example:conditional-scale-out"),
    )
    block = re.findall(r"```bash\n(.*?)```", readme[start:stop], flags=re.DOTALL)[0]
    lines = [line.split("#")[0].strip() for line in block.replace("\\\n", " ").splitlines()]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    outputs = []
    for line in filter(None, lines):
        words = shlex.split(
            line.replace("--num-samples 50000", "--num-samples 128 --shard-size 64").replace("--steps 20", "--steps 2")
        )
        words = [w for w in words if not w.startswith("OMP_NUM_THREADS=")]
        launcher = {"torchrun": ["-m", "torch.distributed.run"], "ddim": ["-m", "ddim"]}[words[0]]
        done = subprocess.run(
            [sys.executable, *launcher, *words[1:]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    assert "on 2 processes" in outputs[0]
    assert "digits-FID" in outputs[1] and "128 samples, 2 shards" in outputs[1]
    with np.load(tmp_path / "digits50k_adm.npz", allow_pickle=False) as archive:
        assert archive["arr_0"].shape == (128, 8, 8, 1) and archive["arr_1"].shape == (128,)
