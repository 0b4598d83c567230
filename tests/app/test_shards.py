"""Sharded, resumable generation (ddim.app.shards) in one process: seeds, partitioning, resume, verify, merge, errors.

The multi-process checks (torchrun, SIGKILL) are in test_shards_torchrun.py, the command line in test_shards_cli.py,
faults and tampering in test_shard_faults.py; they import the helpers below.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from unwritable import unwritable_folder

from ddim import DDIMScheduler
from ddim.app.digits import SAMPLE_SHAPE
from ddim.app.seeding import SEED_RULE, sample_generators, sample_seeds
from ddim.app.shards import (
    FixedBatchModel,
    ProcessGroup,
    ShardError,
    generate_shards,
    load_samples,
    merge_shards,
    rank_shards,
    read_manifest,
    shard_file,
    shard_ranges,
    verify_shards,
)
from ddim.app.shards.layout import MANIFEST_NAME
from ddim.app.shards.manifest import model_description
from ddim.sampling import sample

SHAPE = SAMPLE_SHAPE
#: The configuration shared by the tests (and the torchrun worker): small enough for CI.
SETTINGS: dict[str, Any] = {
    "num_samples": 20,
    "sample_shape": SHAPE,
    "seed": 7,
    "num_inference_steps": 4,
    "eta": 0.5,
    "micro_batch": 4,
    "shard_size": 8,
}


class TinyNet(torch.nn.Module):
    """A small conv + linear epsilon model: convolutions and linear layers are what batch size can perturb."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.conv_in = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.time = torch.nn.Linear(1, 16)
        self.conv_out = torch.nn.Conv2d(16, 1, 3, padding=1)
        self.delay = delay

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.delay:
            time.sleep(self.delay)  # lets the torchrun test kill a rank mid-run
        h = self.conv_in(x) + self.time(t.float()[:, None] / 1000)[:, :, None, None]
        return self.conv_out(torch.nn.functional.silu(h))


def make_model(delay: float = 0.0) -> TinyNet:
    """The same weights in every process."""
    torch.manual_seed(1234)
    return TinyNet(delay).eval()


def make_scheduler() -> DDIMScheduler:
    return DDIMScheduler(clip_sample=False)


def run(out_dir: Path, **overrides: Any) -> Any:
    options = {**SETTINGS, "batch_size": 8, "progress": False, "log": None, **overrides}
    model = options.pop("model", None) or make_model()
    return generate_shards(model, make_scheduler(), out_dir, **options)


def file_digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def shard_digests(folder: Path) -> dict[str, str]:
    """Digests of the shard files (the manifest also logs each run, so it changes on resume)."""
    return {name: digest for name, digest in file_digests(folder).items() if name != MANIFEST_NAME}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One complete single-process run of SETTINGS (batch size 8)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    run(out)
    return out


# --------------------------------------------------------------------------- seeds and partitioning
def test_sample_seeds_hash_seed_and_index() -> None:
    expected = [int(np.random.SeedSequence([3, i]).generate_state(1, dtype=np.uint32)[0]) for i in (0, 1, 5)]
    assert sample_seeds(3, [0, 1, 5]).tolist() == expected
    assert len(set(sample_seeds(2**32 - 1, range(100)).tolist())) == 100


def test_different_run_seeds_give_different_samples(tmp_path: Path) -> None:
    # Regression: PyTorch's CPU generator keeps only the low 32 bits of a seed, so a rule like
    # seed * 2**32 + index gave every run seed the same samples.
    run(tmp_path / "s7", num_samples=4, shard_size=4, batch_size=4)
    run(tmp_path / "s8", num_samples=4, shard_size=4, batch_size=4, seed=8)
    assert not np.array_equal(load_samples(tmp_path / "s7")["samples"], load_samples(tmp_path / "s8")["samples"])
    with pytest.raises(ValueError, match="seed"):
        sample_seeds(2**32, [0])
    with pytest.raises(ValueError, match="seed"):
        sample_seeds(-1, [0])


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 500), st.integers(1, 64), st.integers(1, 9))
def test_shards_cover_every_index_once_and_ranks_get_disjoint_shards(n: int, shard_size: int, world: int) -> None:
    spans = shard_ranges(n, shard_size)
    covered = [i for start, stop in spans for i in range(start, stop)]
    assert covered == list(range(n))
    assert all(0 < stop - start <= shard_size for start, stop in spans)
    todo = list(range(len(spans)))
    dealt = [rank_shards(todo, rank, world) for rank in range(world)]
    assert sorted(s for shards in dealt for s in shards) == todo
    assert max(map(len, dealt)) - min(map(len, dealt)) <= 1


def test_rank_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="rank=2"):
        rank_shards([0, 1], 2, 2)


# --------------------------------------------------------------------------- bit-identity
def test_fixed_micro_batches_make_a_rows_output_independent_of_the_batch_size() -> None:
    model = make_model()
    x = torch.randn(24, *SHAPE, generator=torch.Generator().manual_seed(0))
    t = torch.full((24,), 500)
    fixed = FixedBatchModel(model, 8)
    with torch.no_grad():
        whole = fixed(x, t)
        for size in (8, 16):
            parts = torch.cat([fixed(x[i : i + size], t[i : i + size]) for i in range(0, 24, size)])
            assert torch.equal(parts, whole)
        assert torch.equal(fixed(x[:3], t[:3]), whole[:3])  # padded micro-batch: same rows, same bits
        assert torch.allclose(whole, model(x, t), atol=1e-5)


def test_sample_i_is_ddim_sample_with_generator_seed_times_2_pow_32_plus_i(tmp_path: Path) -> None:
    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # row-wise and exact whatever the batch
        return 0.5 * x + 0.001 * t.float()[:, None, None, None]

    run(tmp_path / "out", model=model, num_samples=6, shard_size=4, batch_size=4)
    stored = load_samples(tmp_path / "out")
    for i in range(6):
        expected = sample(
            model,
            make_scheduler(),
            (1, *SHAPE),
            num_inference_steps=SETTINGS["num_inference_steps"],
            eta=SETTINGS["eta"],
            generator=sample_generators(sample_seeds(SETTINGS["seed"], [i])),
            progress=False,
        )
        assert np.array_equal(stored["samples"][i], expected[0].numpy())
    assert stored["indices"].tolist() == list(range(6))


def test_batch_size_does_not_change_a_single_bit(reference: Path, tmp_path: Path) -> None:
    summary = run(tmp_path / "b4", batch_size=4)
    assert summary.generated == SETTINGS["num_samples"]
    assert shard_digests(tmp_path / "b4") == shard_digests(reference)
    assert len(shard_digests(reference)) == 3


def test_a_sample_does_not_depend_on_num_samples(reference: Path, tmp_path: Path) -> None:
    run(tmp_path / "small", num_samples=5)
    small, full = load_samples(tmp_path / "small"), load_samples(reference)
    assert np.array_equal(small["samples"], full["samples"][:5])


# --------------------------------------------------------------------------- manifest, verify, resume
def test_manifest_records_config_model_grid_seeds_and_checksums(reference: Path) -> None:
    manifest = read_manifest(reference)
    config = manifest["config"]
    assert manifest["complete"] is True
    assert config["num_samples"] == 20 and config["seed"] == 7 and config["eta"] == 0.5
    assert config["seed_rule"] == SEED_RULE
    assert config["timesteps"] == [750, 500, 250, 0]  # leading grid, 4 of 1000 steps
    assert config["scheduler"]["config"]["clip_sample"] is False
    assert len(config["model"]["state_sha256"]) == 64
    for key, record in manifest["shards"].items():
        data = (reference / record["file"]).read_bytes()
        assert record["sha256"] == hashlib.sha256(data).hexdigest()
        assert (record["start"], record["stop"]) == shard_ranges(20, 8)[int(key)]
    umask = os.umask(0)
    os.umask(umask)
    assert (reference / shard_file(0)).stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0o600
    merged = load_samples(reference)
    assert merged["seeds"].tolist() == sample_seeds(7, range(20)).tolist()
    assert verify_shards(reference).ok


def test_model_description_changes_with_the_weights() -> None:
    model = make_model()
    before = model_description(model, {"source": "test"})
    with torch.no_grad():
        model.conv_out.bias.add_(1e-7)
    after = model_description(model, {"source": "test"})
    assert before["source"] == "test" and before["state_sha256"] != after["state_sha256"]


def test_truncated_shard_is_reported_by_verify_and_regenerated_by_resume(reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(out)
    original = shard_digests(out)
    shard = out / shard_file(1)
    shard.write_bytes(shard.read_bytes()[:100])
    report = verify_shards(out)
    assert not report.ok and list(report.corrupt) == [1] and not report.missing
    assert "checksum mismatch" in report.describe()
    with pytest.raises(ShardError, match="shard-00001"):
        load_samples(out)
    summary = run(out, batch_size=4)
    assert (summary.generated, summary.skipped) == (8, 12)
    assert verify_shards(out).ok
    assert shard_digests(out) == original


def test_missing_shard_and_leftovers_of_a_killed_run_are_redone(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(out)
    original = shard_digests(out)
    (out / shard_file(2)).unlink()
    (out / f".{shard_file(0)}.abc.tmp").write_bytes(b"partial")  # a temporary file left by a kill
    (out / shard_file(1)).write_bytes(b"not a shard")  # written but never recorded...
    manifest = read_manifest(out)
    del manifest["shards"]["1"]  # ...as after a kill between the shard and its record
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    report = verify_shards(out)
    assert report.missing == [2] and list(report.corrupt) == [1]
    summary = run(out)
    assert (summary.generated, summary.skipped) == (12, 8)
    assert shard_digests(out) == original


def test_merge_writes_all_samples_in_index_order_and_refuses_to_overwrite(reference: Path, tmp_path: Path) -> None:
    target = merge_shards(reference, tmp_path / "all.npz")
    with np.load(target, allow_pickle=False) as merged:
        assert merged["indices"].tolist() == list(range(20))
        assert merged["samples"].shape == (20, *SHAPE)
        assert np.array_equal(merged["samples"], load_samples(reference)["samples"])
    before = target.read_bytes()
    with pytest.raises(ValueError, match="exists"):
        merge_shards(reference, target)
    assert target.read_bytes() == before


def test_png_option_writes_one_image_per_sample(tmp_path: Path) -> None:
    from PIL import Image

    run(tmp_path / "run", num_samples=5, png=True)
    images = sorted((tmp_path / "run" / "images").iterdir())
    assert [p.name for p in images] == [f"{i:06d}.png" for i in range(5)]
    with Image.open(images[0]) as image:
        assert image.size == (8, 8) and image.mode == "L"


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"num_samples": 0}, ValueError, "num_samples=0"),
        ({"num_samples": -3}, ValueError, "num_samples=-3"),
        ({"num_samples": 2.5}, TypeError, "num_samples"),
        ({"num_samples": True}, TypeError, "num_samples"),
        ({"batch_size": 6}, ValueError, "multiples of micro_batch=4"),
        ({"shard_size": 10}, ValueError, "multiples of micro_batch=4"),
        ({"seed": -1}, ValueError, "seed=-1"),
        ({"seed": 2**32}, ValueError, "seed=4294967296"),
        ({"eta": -0.5}, ValueError, "eta=-0.5"),
        ({"num_inference_steps": 0}, ValueError, "num_inference_steps"),
        ({"sample_shape": (1, 0, 8)}, ValueError, "sample_shape=0"),
        ({"sample_shape": (2, 8, 8), "png": True}, ValueError, "png=True"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_written(
    tmp_path: Path, overrides: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        run(tmp_path / "out", **overrides)
    assert not (tmp_path / "out").exists()


def test_more_processes_than_samples_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ddim.app.shards.generation.join_process_group", lambda: ProcessGroup(0, 3, 0, created=False))
    with pytest.raises(ValueError, match="world_size=3 is larger than num_samples=2"):
        run(tmp_path / "out", num_samples=2)
    assert not (tmp_path / "out").exists()


def test_cuda_without_cuda_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        run(tmp_path / "out", device="cuda")
    assert not (tmp_path / "out").exists()


def test_foreign_non_empty_directory_is_refused_and_left_untouched(tmp_path: Path) -> None:
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.npz").write_bytes(b"precious")
    with pytest.raises(ValueError, match=r"not empty and holds no manifest\.json"):
        run(out)
    assert file_digests(out) == {"holiday.npz": hashlib.sha256(b"precious").hexdigest()}


@pytest.mark.fault
def test_unwritable_output_directory_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        run(blocker)
    with pytest.raises(ValueError, match="cannot be written"):
        run(blocker / "sub")
    assert blocker.read_bytes() == b"x"


@pytest.mark.fault
def test_read_only_directory_is_refused() -> None:
    model = make_model()
    with unwritable_folder() as out:
        with pytest.raises(ValueError, match="cannot be written: Permission denied"):
            run(out, model=model)
        assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"eta": 0.0}, "eta"),
        ({"seed": 8}, "seed"),
        ({"num_samples": 21}, "num_samples"),
        ({"num_inference_steps": 5}, "timesteps"),
        ({"micro_batch": 8}, "micro_batch"),
    ],
)
def test_resume_with_another_configuration_is_refused_and_nothing_is_overwritten(
    tmp_path: Path, overrides: dict[str, Any], key: str
) -> None:
    out = tmp_path / "run"
    run(out, num_samples=8)
    before = file_digests(out)
    with pytest.raises(ValueError, match=f"another configuration .*{key}: manifest has"):
        run(out, **{"num_samples": 8, **overrides})
    assert file_digests(out) == before


def test_resume_with_other_weights_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(out, num_samples=4)
    model = make_model()
    with torch.no_grad():
        model.conv_in.weight.mul_(1.01)
    with pytest.raises(ValueError, match="model: manifest has"):
        run(out, num_samples=4, model=model)


def test_verify_of_a_directory_without_manifest_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no manifest\.json"):
        verify_shards(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="cannot be read as JSON"):
        verify_shards(tmp_path)


# --------------------------------------------------------------------------- CLI: ddim sample --out-dir, verify, merge
CLI_SAMPLE = [
    "sample",
    "--num-samples",
    "8",
    "--steps",
    "2",
    "--micro-batch",
    "4",
    "--shard-size",
    "4",
    "--no-progress",
]
