"""Tampered and damaged shard directories: stray records, foreign shards, edited and broken manifests, stray files.

Each case is reported by `ddim verify` (exit 1 for shards or stray files; 2, one line, for a damaged manifest) and
never blessed: merge refuses it, and a resume redoes the shards concerned, ending bit-identical to an untouched run.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_shards import file_digests, run, shard_digests

from ddim import DDIMScheduler
from ddim.app.cli import main
from ddim.app.shards import (
    ShardError,
    generate_shards,
    load_samples,
    merge_shards,
    read_manifest,
    record_file,
    shard_file,
    verify_shards,
)
from ddim.app.shards.layout import MANIFEST_NAME


@pytest.fixture(scope="module")
def untouched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete run of the shared settings (3 shards: 8, 8 and 4 samples)."""
    out = tmp_path_factory.mktemp("untouched") / "run"
    run(out)
    return out


def copy_of(untouched: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(untouched, out)
    return out


def edit_manifest(out: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    edit(manifest)
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))


def bless(out: Path, shard_id: int) -> dict[str, Any]:
    """A record of shard ``shard_id`` matching the file now on disk (what a tamperer would write)."""
    data = (out / shard_file(shard_id)).read_bytes()
    record = read_manifest(out)["shards"][str(shard_id)]
    return {**record, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def cli(capsys: pytest.CaptureFixture[str], *arguments: str) -> tuple[int, str, str]:
    """``ddim ARGUMENTS``: exit code, stdout and stderr."""
    capsys.readouterr()
    code = main(list(arguments))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_refused_by_verify_and_merge(out: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> str:
    """Verify exits 1, merge exits 1 and writes nothing; returns verify's report."""
    code, report, _ = cli(capsys, "verify", str(out))
    assert code == 1 and report.rstrip().splitlines()[-1].startswith("FAILED")
    assert cli(capsys, "merge", str(out), "-o", str(tmp_path / "all.npz"))[0] == 1
    assert not (tmp_path / "all.npz").exists()
    with pytest.raises(ShardError):
        merge_shards(out, tmp_path / "all.npz")
    return report


# --------------------------------------------------------------------------- records never override the manifest
def test_a_stray_record_does_not_bless_a_shard_with_a_flipped_byte(
    untouched: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = copy_of(untouched, tmp_path)
    shard = out / shard_file(1)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    (out / record_file(1)).write_text(json.dumps(bless(out, 1)))
    report = assert_refused_by_verify_and_merge(out, capsys, tmp_path)
    assert "corrupt shard shard-00001.npz: checksum mismatch" in report
    summary = run(out)  # the resume redoes the shard rather than recording it
    assert (summary.generated, summary.skipped) == (8, 12)
    assert shard_digests(out) == shard_digests(untouched) and not (out / record_file(1)).exists()
    assert verify_shards(out).ok


def test_a_record_is_folded_in_only_for_an_unlisted_shard_whose_checksum_matches(
    untouched: Path, tmp_path: Path
) -> None:
    out = copy_of(untouched, tmp_path)
    record = read_manifest(out)["shards"]["2"]
    edit_manifest(out, lambda manifest: manifest["shards"].pop("2"))
    (out / record_file(2)).write_text(json.dumps({**record, "sha256": "0" * 64}))
    assert list(verify_shards(out).corrupt) == [2]
    (out / record_file(2)).write_text(json.dumps(record))  # the record a rank writes when it finishes the shard
    assert verify_shards(out).ok
    assert (run(out).generated, verify_shards(out).ok) == (0, True)
    assert read_manifest(out)["shards"]["2"] == record and not (out / record_file(2)).exists()


# --------------------------------------------------------------------------- shards against the seed rule and layout
def test_a_shard_of_another_seed_is_found_even_with_its_checksum_updated(
    untouched: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "seed1"
    run(other, seed=1)
    out = copy_of(untouched, tmp_path)
    shutil.copyfile(other / shard_file(1), out / shard_file(1))
    edit_manifest(out, lambda manifest: manifest["shards"].update({"1": bless(out, 1)}))
    report = assert_refused_by_verify_and_merge(out, capsys, tmp_path)
    assert "corrupt shard shard-00001.npz: its seeds are not those of seed 7" in report
    assert run(out).generated == 8
    assert shard_digests(out) == shard_digests(untouched)


def test_a_shard_holding_another_range_is_found(untouched: Path, tmp_path: Path) -> None:
    out = copy_of(untouched, tmp_path)
    shutil.copyfile(out / shard_file(0), out / shard_file(1))
    edit_manifest(out, lambda manifest: manifest["shards"].update({"1": bless(out, 1)}))
    assert "does not hold the indices [8, 16)" in verify_shards(out).corrupt[1]


@pytest.mark.parametrize("shape", [(8, 1, 4, 16), (8, 1, 8, 7), (8, 8, 8)], ids=["same-size", "smaller", "fewer-dims"])
def test_a_shard_whose_samples_have_another_shape_is_found_and_redone(
    untouched: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], shape: tuple[int, ...]
) -> None:
    """Right indices and seeds, checksum recorded, samples of the wrong shape: refused, and a resume redoes it."""
    out = copy_of(untouched, tmp_path)
    with np.load(out / shard_file(1), allow_pickle=False) as shard:
        arrays = {name: shard[name] for name in shard.files}
    size = int(np.prod(shape))
    arrays["samples"] = arrays["samples"].reshape(-1)[:size].reshape(shape)
    with (out / shard_file(1)).open("wb") as handle:
        np.savez(handle, **arrays)
    edit_manifest(out, lambda manifest: manifest["shards"].update({"1": bless(out, 1)}))
    report = assert_refused_by_verify_and_merge(out, capsys, tmp_path)
    assert "corrupt shard shard-00001.npz: samples missing or not of shape (8, 1, 8, 8)" in report
    summary = run(out)
    assert (summary.generated, summary.skipped) == (8, 12)
    assert shard_digests(out) == shard_digests(untouched) and verify_shards(out).ok


def test_a_shard_just_past_the_layout_is_stray(
    untouched: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Shard 3 and its record, the first index beyond the 3 shards of the run: stray, and removed by a resume."""
    out = copy_of(untouched, tmp_path)
    shutil.copyfile(out / shard_file(2), out / shard_file(3))
    (out / record_file(3)).write_text(
        json.dumps({**bless(out, 2), "shard": 3, "file": shard_file(3), "start": 24, "stop": 28})
    )
    report = assert_refused_by_verify_and_merge(out, capsys, tmp_path)
    assert "stray files, not part of the run: shard-00003.json, shard-00003.npz" in report
    assert verify_shards(out).complete == [0, 1, 2]
    assert run(out).generated == 0
    assert not (out / shard_file(3)).exists() and not (out / record_file(3)).exists()
    assert verify_shards(out).ok


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda config: config.update(num_samples=8), "shards['1'] is beyond the layout"),  # 1 shard instead of 3
        (lambda config: config.update(num_samples=18), "shards['2'].stop=20 does not match the layout"),
        (lambda config: config.update(shard_size=4), "shards['0'].stop=8 does not match the layout"),
    ],
    ids=["fewer-shards", "shorter-last-shard", "smaller-shards"],
)
def test_an_edited_layout_in_the_manifest_is_found(
    untouched: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    edit: Callable[[dict[str, Any]], None],
    field: str,
) -> None:
    out = copy_of(untouched, tmp_path)
    edit_manifest(out, lambda manifest: edit(manifest["config"]))
    with pytest.raises(ShardError, match=re.escape(f"manifest.json is damaged: {field}")):
        verify_shards(out)
    code, _, error = cli(capsys, "verify", str(out))
    assert code == 2 and "manifest.json is damaged" in error and error.count("\n") == 1


def test_stray_files_are_reported_and_stray_shards_are_removed_by_a_resume(
    untouched: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = copy_of(untouched, tmp_path)
    shutil.copyfile(out / shard_file(0), out / shard_file(99))  # beyond the 3 shards of the run
    (out / "notes.txt").write_text("mine")
    report = assert_refused_by_verify_and_merge(out, capsys, tmp_path)
    assert "stray files, not part of the run: notes.txt, shard-00099.npz" in report
    assert "move notes.txt out of the directory" in report
    lines: list[str] = []
    assert run(out, log=lines.append).generated == 0
    assert not (out / shard_file(99)).exists() and (out / "notes.txt").read_text() == "mine"
    assert any("left untouched: notes.txt" in line for line in lines)
    assert verify_shards(out).stray == ["notes.txt"]
    (out / "notes.txt").unlink()
    assert verify_shards(out).ok and len(load_samples(out)["indices"]) == 20


def test_the_lock_and_the_images_folder_are_not_stray(tmp_path: Path) -> None:
    out = tmp_path / "png"
    run(out, num_samples=4, png=True)
    (out / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "then"}))
    report = verify_shards(out)
    assert report.ok and report.stray == []
    assert "in use by pid 1 on elsewhere since then" in report.describe()


# --------------------------------------------------------------------------- damaged manifests: one line, exit 2
DAMAGES: list[tuple[Callable[[dict[str, Any]], None], str]] = [
    (lambda m: m.update(shards=[]), "shards is missing or not a JSON object"),
    (lambda m: m["shards"].update({"0": "shard-00000.npz"}), "shards['0'] is not a JSON object"),
    (lambda m: m["shards"].update({"abc": m["shards"]["0"]}), "shards['abc'] is not a shard number"),
    (lambda m: m["shards"]["1"].pop("sha256"), "shards['1'].sha256=None is not a SHA-256"),
    (lambda m: m.pop("config"), "config is missing"),
    (lambda m: m["config"].pop("shard_size"), "config.shard_size is missing"),
    (lambda m: m["config"].update(num_samples="20"), "config.num_samples='20' is not allowed"),
    (lambda m: m["config"].update(sample_shape=None), "config.sample_shape=None"),
    (lambda m: m.pop("runs"), "runs is missing"),
    (lambda m: m.update(complete="yes"), "complete='yes'"),
]


@pytest.mark.parametrize(("damage", "field"), DAMAGES, ids=[field.split()[0] for _, field in DAMAGES])
def test_a_damaged_manifest_is_one_line_for_verify_merge_and_resume(
    untouched: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    damage: Callable[[dict[str, Any]], None],
    field: str,
) -> None:
    out = copy_of(untouched, tmp_path)
    edit_manifest(out, damage)
    before = file_digests(out)
    expected = f"manifest.json is damaged: {field}"
    with pytest.raises(ShardError, match=re.escape(expected)):
        verify_shards(out)
    for arguments in (("verify", str(out)), ("merge", str(out), "-o", str(tmp_path / "all.npz"))):
        code, _, error = cli(capsys, *arguments)
        assert code == 2 and expected in error and error.count("\n") == 1
    with pytest.raises(ShardError, match=re.escape(expected)):
        run(out)  # the resume
    assert file_digests(out) == before and not (tmp_path / "all.npz").exists()


def test_a_folder_in_place_of_a_shard_is_reported_not_a_traceback(
    untouched: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = copy_of(untouched, tmp_path)
    (out / shard_file(1)).unlink()
    (out / shard_file(1)).mkdir()
    assert verify_shards(out).corrupt == {1: "is a folder, not a shard file"}
    assert cli(capsys, "verify", str(out))[0] == 1
    before = file_digests(out)
    with pytest.raises(ShardError, match=r"shard-00001\.npz is a folder where a shard belongs"):
        run(out)
    assert (out / shard_file(1)).is_dir() and file_digests(out) == before


# --------------------------------------------------------------------------- messages in the caller's language
def test_library_messages_name_no_parameter_and_the_cli_names_its_flags(
    untouched: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ShardError) as refused:
        verify_shards(tmp_path)
    assert "out_dir=" not in str(refused.value) and "has no manifest.json" in str(refused.value)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ShardError) as refused:
        run(blocker)
    assert str(refused.value) == f"{str(blocker)!r} exists and is not a directory"

    target = tmp_path / "all.npz"
    merge_shards(untouched, target)
    with pytest.raises(ShardError) as refused:
        merge_shards(untouched, target)
    assert str(refused.value) == f"{str(target)!r} exists; pass overwrite=True to replace it"
    code, _, error = cli(capsys, "merge", str(untouched), "-o", str(target))
    assert code == 2 and f"--output {str(target)!r} exists; pass --force to replace it" in error
    assert "overwrite" not in error
    assert cli(capsys, "merge", str(untouched), "-o", str(target), "--force")[0] == 0
    code, _, error = cli(capsys, "merge", str(untouched), "-o", str(tmp_path / "no" / "all.npz"))
    assert code == 2 and "folder" in error and "does not exist" in error


def test_non_finite_samples_fail_the_shard_and_record_nothing(tmp_path: Path) -> None:
    from ddim import NonFiniteOutputError

    def broken(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x, float("nan"))

    scheduler = DDIMScheduler(clip_sample=False)
    with pytest.raises(NonFiniteOutputError, match="came out non-finite"):
        generate_shards(
            broken,
            scheduler,
            tmp_path / "run",
            8,
            (1, 2, 2),
            num_inference_steps=2,
            batch_size=4,
            micro_batch=4,
            shard_size=4,
            progress=False,
            log=None,
        )
    assert not list((tmp_path / "run").glob("shard-*"))
