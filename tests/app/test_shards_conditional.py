"""Class-conditional shard jobs (ddim.app.shards with a Conditioning): the label rule, bit-identity across batch
sizes, resume, tampered labels, per-shard feature statistics and FID from them.

The torchrun checks of conditional jobs are in test_shards_torchrun.py, exports in test_shards_export.py.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_shards import make_scheduler, shard_digests

from ddim.app.digits.conditional import sample_digits
from ddim.app.digits.fid import feature_statistics, frechet_distance
from ddim.app.digits.fid_statistics import DigitsFeatures, DigitsReference, fid_from_shards
from ddim.app.shards import ShardError, generate_shards, load_samples, read_manifest, shard_file, verify_shards
from ddim.app.shards.conditioning import LABEL_RULES, Conditioning, sample_labels
from ddim.app.shards.files import npz_bytes, read_npz, sha256_hex
from ddim.app.shards.layout import MANIFEST_NAME
from ddim.app.shards.merged_statistics import streamed_sha256
from ddim.app.shards.statistics import SufficientStatistics
from ddim.sampling import sample

NUM_LABELS, NULL_LABEL = 11, 10
#: A small conditional job: 10 digits in turn, guided; shards of 16 in micro-batches of 8.
COND_SETTINGS: dict[str, Any] = {
    "num_samples": 40,
    "sample_shape": (1, 8, 8),
    "seed": 5,
    "num_inference_steps": 3,
    "eta": 0.5,
    "micro_batch": 8,
    "shard_size": 16,
}


class TinyConditionalNet(torch.nn.Module):
    """A small conv + linear + label-embedding model ``model(x, t, labels)``."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.delay = delay
        self.conv_in = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.time = torch.nn.Linear(1, 16)
        self.label = torch.nn.Embedding(NUM_LABELS, 16)
        self.conv_out = torch.nn.Conv2d(16, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.delay:
            time.sleep(self.delay)  # lets the torchrun test kill a rank mid-run
        h = self.conv_in(x) + (self.time(t.float()[:, None] / 1000) + self.label(labels))[:, :, None, None]
        return self.conv_out(torch.nn.functional.silu(h))


def make_conditional_model(delay: float = 0.0) -> TinyConditionalNet:
    """The same weights in every process."""
    torch.manual_seed(4321)
    return TinyConditionalNet(delay).eval()


def conditioning(rule: str = "cycle", scale: float = 1.5, rescale: float = 0.7) -> Conditioning:
    return Conditioning(tuple(range(10)), rule, NUM_LABELS, NULL_LABEL, scale, rescale)


def run_conditional(out_dir: Path, **overrides: Any) -> Any:
    options: dict[str, Any] = {
        **COND_SETTINGS,
        "batch_size": 8,
        "progress": False,
        "log": None,
        "conditioning": conditioning(),
        **overrides,
    }
    model = options.pop("model", None) or make_conditional_model()
    if options["conditioning"] is None:  # an unconditional model from the conditional one: the null label
        conditional = model
        model = lambda x, t: conditional(x, t, torch.full((x.shape[0],), NULL_LABEL))  # noqa: E731
    return generate_shards(model, make_scheduler(), out_dir, **options)


@pytest.fixture(scope="module")
def features() -> DigitsFeatures:
    return DigitsFeatures()


# --------------------------------------------------------------------------- the label rule
def test_cycle_labels_take_the_classes_in_turn() -> None:
    assert sample_labels(3, [0, 1, 2, 3, 4, 7], (4, 2, 9), "cycle").tolist() == [4, 2, 9, 4, 2, 2]


def test_uniform_labels_are_the_second_seed_sequence_word_scaled_to_the_classes() -> None:
    indices = [0, 1, 17, 2**32 - 1]
    words = [int(np.random.SeedSequence([9, i]).generate_state(2, dtype=np.uint32)[1]) for i in indices]
    classes = (3, 5, 7)
    expected = [classes[w * 3 // 2**32] for w in words]  # floor(w k / 2**32), written out
    assert sample_labels(9, indices, classes, "uniform").tolist() == expected
    assert "generate_state(2, uint32)[1]" in LABEL_RULES["uniform"]


def test_uniform_labels_are_close_to_uniform() -> None:
    labels = sample_labels(0, np.arange(20_000), tuple(range(10)), "uniform")
    counts = np.bincount(labels, minlength=10)
    # a chi-square statistic with 9 degrees of freedom; 27.9 is its 0.999 quantile
    chi2 = float(((counts - 2000) ** 2 / 2000).sum())
    assert chi2 < 27.9, counts


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"rule": "sorted"}, "rule='sorted' is not supported"),
        ({"classes": ()}, "classes must hold at least one label"),
        ({"classes": (11,)}, "classes"),
        ({"guidance_scale": -1.0}, "guidance_scale"),
        ({"guidance_rescale": 2.0}, "guidance_rescale"),
        ({"guidance_kind": "cfg-zero"}, "guidance_kind='cfg-zero' is not supported"),
        ({"guidance_kind": "cfg++", "guidance_scale": 1.5}, "guidance_scale"),
        ({"guidance_kind": "cfg++", "guidance_scale": 0.6, "guidance_rescale": 0.7}, "CFG\\+\\+ takes 0"),
    ],
)
def test_bad_conditioning_is_refused(arguments: dict[str, Any], message: str) -> None:
    values: dict[str, Any] = {"classes": (1, 2), "rule": "cycle", "num_labels": NUM_LABELS, "null_label": NULL_LABEL}
    with pytest.raises(ValueError, match=message):
        Conditioning(**{**values, **arguments})


# --------------------------------------------------------------------------- bit-identity and the samples
@pytest.mark.slow
def test_conditional_batch_sizes_16_and_64_give_the_same_bits(tmp_path: Path) -> None:
    settings = {"num_samples": 130, "micro_batch": 16, "shard_size": 64, "conditioning": conditioning("uniform")}
    run_conditional(tmp_path / "b16", batch_size=16, **settings)
    run_conditional(tmp_path / "b64", batch_size=64, **settings)
    assert shard_digests(tmp_path / "b16") == shard_digests(tmp_path / "b64")
    assert len(shard_digests(tmp_path / "b16")) == 3


def test_sample_i_is_guided_ddim_with_its_seed_and_label(tmp_path: Path) -> None:
    def model(x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # row-wise and exact
        return 0.5 * x + 0.001 * t.float()[:, None, None, None] + 0.01 * labels.float()[:, None, None, None]

    generate_shards(
        model,
        make_scheduler(),
        tmp_path / "out",
        **{**COND_SETTINGS, "num_samples": 5, "shard_size": 8},
        batch_size=8,
        progress=False,
        log=None,
        conditioning=conditioning(scale=2.0, rescale=0.5),
    )
    stored = load_samples(tmp_path / "out")
    assert stored["labels"].tolist() == [0, 1, 2, 3, 4]
    for i in range(5):
        label = torch.tensor([i])
        expected = sample(
            lambda x, t, label=label: model(x, t, label),
            make_scheduler(),
            (1, 1, 8, 8),
            num_inference_steps=COND_SETTINGS["num_inference_steps"],
            eta=COND_SETTINGS["eta"],
            generator=torch.Generator().manual_seed(int(stored["seeds"][i])),
            guidance_scale=2.0,
            unconditional_model=lambda x, t: model(x, t, torch.tensor([NULL_LABEL])),
            guidance_rescale=0.5,
        )
        assert np.array_equal(stored["samples"][i], expected[0].numpy())


def test_cfg_pp_shard_sample_i_is_the_cfg_pp_digit_sample_of_its_seed_and_label(tmp_path: Path) -> None:
    def model(x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # row-wise and exact
        return 0.5 * x + 0.001 * t.float()[:, None, None, None] + 0.01 * labels.float()[:, None, None, None]

    settings = {**COND_SETTINGS, "num_samples": 5, "shard_size": 8}
    cfg_pp = Conditioning(tuple(range(10)), "cycle", NUM_LABELS, NULL_LABEL, 0.6, 0.0, "cfg++")
    generate_shards(model, make_scheduler(), tmp_path / "out", **settings, batch_size=8, progress=False, log=None,
                    conditioning=cfg_pp)  # fmt: skip
    stored = load_samples(tmp_path / "out")
    assert read_manifest(tmp_path / "out")["config"]["conditioning"]["guidance_kind"] == "cfg++"
    for i in range(5):  # the grid sampler of `ddim sample --digit i --guidance cfg++`
        expected = sample_digits(
            model,
            make_scheduler(),
            [i],
            steps=COND_SETTINGS["num_inference_steps"],
            eta=COND_SETTINGS["eta"],
            generator=torch.Generator().manual_seed(int(stored["seeds"][i])),
            guidance="cfg++",
            guidance_scale=0.6,
            guidance_rescale=0.0,
        )
        assert np.array_equal(stored["samples"][i], expected[0].numpy())
    with pytest.raises(ShardError, match=r"another configuration \(conditioning"):
        generate_shards(model, make_scheduler(), tmp_path / "out", **settings, batch_size=8, progress=False, log=None,
                        conditioning=conditioning(scale=0.6, rescale=0.0))  # fmt: skip


def test_labels_change_the_samples_and_the_manifest_records_the_conditioning(tmp_path: Path) -> None:
    run_conditional(tmp_path / "cycle", num_samples=8, shard_size=8)
    run_conditional(tmp_path / "uniform", num_samples=8, shard_size=8, conditioning=conditioning("uniform"))
    cycle, uniform = load_samples(tmp_path / "cycle"), load_samples(tmp_path / "uniform")
    assert np.array_equal(cycle["seeds"], uniform["seeds"])
    differs = cycle["labels"] != uniform["labels"]
    assert differs.any()
    rows_differ = (cycle["samples"] != uniform["samples"]).reshape(8, -1).any(1)
    assert np.array_equal(rows_differ, differs)  # a sample depends on its label, not on the other rows
    recorded = read_manifest(tmp_path / "uniform")["config"]["conditioning"]
    assert recorded["label_rule"] == "uniform" and recorded["guidance_scale"] == 1.5
    assert recorded["null_label"] == NULL_LABEL and recorded["guidance_kind"] == "cfg"


def test_resume_with_other_guidance_is_refused(tmp_path: Path) -> None:
    run_conditional(tmp_path / "out", num_samples=8, shard_size=8)
    with pytest.raises(ShardError, match=r"another configuration \(conditioning"):
        run_conditional(tmp_path / "out", num_samples=8, shard_size=8, conditioning=conditioning(scale=2.0))


def test_missing_shard_of_a_conditional_run_is_redone_identically(tmp_path: Path) -> None:
    run_conditional(tmp_path / "out")
    original = shard_digests(tmp_path / "out")
    (tmp_path / "out" / shard_file(1)).unlink()
    summary = run_conditional(tmp_path / "out", batch_size=16)
    assert summary.generated == 16 and summary.skipped == 24
    assert shard_digests(tmp_path / "out") == original


# --------------------------------------------------------------------------- tampering
def rewrite_shard(out_dir: Path, shard_id: int, change: Any) -> None:
    """Rewrite a shard with ``change(arrays)`` applied, and record its new checksum in the manifest (a forger)."""
    path = out_dir / shard_file(shard_id)
    arrays = read_npz(path.read_bytes())
    change(arrays)
    data = npz_bytes(arrays)
    path.write_bytes(data)
    manifest = json.loads((out_dir / MANIFEST_NAME).read_text())
    manifest["shards"][str(shard_id)].update({"bytes": len(data), "sha256": sha256_hex(data)})
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest))


def test_verify_finds_labels_that_do_not_follow_the_rule(tmp_path: Path) -> None:
    run_conditional(tmp_path / "out")

    def relabel(arrays: dict[str, np.ndarray]) -> None:
        arrays["labels"] = arrays["labels"].copy()
        arrays["labels"][0] = (arrays["labels"][0] + 1) % 10

    rewrite_shard(tmp_path / "out", 1, relabel)
    report = verify_shards(tmp_path / "out")
    assert report.corrupt == {1: "its labels are not those of the label rule 'cycle' for seed 5"}
    rewrite_shard(tmp_path / "out", 2, lambda arrays: arrays.pop("labels"))
    assert 2 in verify_shards(tmp_path / "out").corrupt
    with pytest.raises(ShardError, match="label rule"):
        load_samples(tmp_path / "out")


@pytest.mark.slow
def test_verify_finds_statistics_that_do_not_match_the_samples(tmp_path: Path, features: DigitsFeatures) -> None:
    run_conditional(tmp_path / "out", fid_features=features)
    assert verify_shards(tmp_path / "out").ok

    def shift(arrays: dict[str, np.ndarray]) -> None:
        arrays["fid_sum"] = arrays["fid_sum"] + 1e-2 * np.abs(arrays["fid_sum"]).max()

    def recount(arrays: dict[str, np.ndarray]) -> None:
        arrays["fid_class_count"] = np.roll(arrays["fid_class_count"], 1)

    def swap_samples(arrays: dict[str, np.ndarray]) -> None:
        arrays["samples"] = arrays["samples"][::-1].copy()  # same statistics overall, other per label

    rewrite_shard(tmp_path / "out", 0, shift)
    rewrite_shard(tmp_path / "out", 1, recount)
    rewrite_shard(tmp_path / "out", 2, swap_samples)
    corrupt = verify_shards(tmp_path / "out").corrupt
    assert corrupt[0] == "its statistics fid_sum do not match its samples (recomputed from the samples)"
    assert corrupt[1] == "its statistics fid_class_count do not match its samples"
    assert corrupt[2].startswith("its statistics fid_class_")


@pytest.mark.slow
def test_fid_from_shards_refuses_a_shard_that_does_not_match_its_checksum(
    tmp_path: Path, features: DigitsFeatures
) -> None:
    run_conditional(tmp_path / "out", fid_features=features)
    shard = tmp_path / "out" / shard_file(1)
    data = bytearray(shard.read_bytes())
    data[-100] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"shard-00001\.npz does not match its recorded SHA-256"):
        fid_from_shards(tmp_path / "out")
    shard.write_bytes(bytes(data[:-1]))
    with pytest.raises(ShardError, match="bytes on disk"):
        fid_from_shards(tmp_path / "out")
    shard.unlink()
    with pytest.raises(ShardError, match="missing"):
        fid_from_shards(tmp_path / "out")


def test_streamed_sha256_reads_regular_files_only(tmp_path: Path) -> None:
    data = b"shard bytes"
    (tmp_path / "file").write_bytes(data)
    assert streamed_sha256(tmp_path / "file", len(data)) == sha256_hex(data)
    with pytest.raises(ShardError, match=f"{len(data)} bytes on disk, 4 recorded"):
        streamed_sha256(tmp_path / "file", 4)
    (tmp_path / "link").symlink_to(tmp_path / "file")
    with pytest.raises(ShardError, match="is a symbolic link"):
        streamed_sha256(tmp_path / "link", len(data))
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ShardError, match=r"is a FIFO \(named pipe\), not a regular file"):  # and never blocks
        streamed_sha256(tmp_path / "fifo", len(data))


def test_fid_from_shards_needs_statistics(tmp_path: Path) -> None:
    run_conditional(tmp_path / "out", num_samples=8, shard_size=8)
    with pytest.raises(ShardError, match="without feature statistics"):
        fid_from_shards(tmp_path / "out")


@pytest.mark.parametrize(
    "change",
    [
        {"label_rule": "sorted"},
        {"classes": [3, "7"]},
        {"guidance_scale": -2.0},
        {"null_label": 99},
        {"label_rule_text": "anything"},
        {"guidance_kind": "cfg++"},  # CFG++ takes lambda in [0, 1] and no rescale; the run recorded 1.5 and 0.7
    ],
)
def test_a_damaged_conditioning_in_the_manifest_is_named(tmp_path: Path, change: dict[str, Any]) -> None:
    run_conditional(tmp_path / "out", num_samples=8, shard_size=8)
    manifest = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())
    manifest["config"]["conditioning"].update(change)
    (tmp_path / "out" / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match=r"manifest\.json is damaged: config\.conditioning is not well formed"):
        verify_shards(tmp_path / "out")


# --------------------------------------------------------------------------- FID from merged statistics
def test_an_unconditional_run_with_statistics_has_an_overall_fid_only(tmp_path: Path, features: DigitsFeatures) -> None:
    run_conditional(tmp_path / "out", num_samples=8, shard_size=8, conditioning=None, model=None, fid_features=features)
    result = fid_from_shards(tmp_path / "out")
    assert result.per_digit == {} and result.num_samples == 8 and result.fid > 0


def test_sufficient_statistics_give_numpys_mean_and_covariance() -> None:
    values = np.random.default_rng(0).normal(3.0, 2.0, size=(50, 4))
    halves = [SufficientStatistics(len(v), v.sum(0), v.T @ v) for v in (values[:20], values[20:])]
    merged = halves[0] + halves[1]
    assert merged.count == 50
    np.testing.assert_allclose(merged.mean, values.mean(0), rtol=1e-13)
    np.testing.assert_allclose(merged.covariance, np.cov(values, rowvar=False), rtol=1e-12)
    with pytest.raises(ValueError, match="at least 2 samples"):
        _ = SufficientStatistics(1, values[0], np.outer(values[0], values[0])).covariance


@pytest.mark.slow
def test_fid_from_shard_statistics_equals_fid_of_the_merged_samples(tmp_path: Path, features: DigitsFeatures) -> None:
    # 400 samples, 40 of each digit: more than the 32 feature dimensions, so every covariance has full rank
    out = tmp_path / "out"
    run_conditional(out, num_samples=400, shard_size=48, micro_batch=16, batch_size=48, fid_features=features)
    assert verify_shards(out).ok
    reference = DigitsReference(features)
    result = fid_from_shards(out, reference)
    merged = load_samples(out)
    values = features(merged["samples"])
    direct = frechet_distance(feature_statistics(values), reference.overall)
    assert result.num_samples == 400 and result.num_shards == 9
    assert abs(result.fid - direct) <= 1e-9 * direct
    assert sorted(result.per_digit) == list(range(10))
    for digit, (count, fid) in result.per_digit.items():
        rows = values[merged["labels"] == digit]
        assert count == len(rows) == 40
        expected = frechet_distance(feature_statistics(rows), reference.per_digit[digit])
        assert abs(fid - expected) <= 1e-9 * expected, digit


def test_features_of_a_sample_do_not_depend_on_the_other_rows(features: DigitsFeatures) -> None:
    x = torch.rand(100, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    whole = features(x)
    assert np.array_equal(np.concatenate([features(x[:64]), features(x[64:])]), whole)
    assert np.array_equal(features(x[:3]), whole[:3])  # a padded micro-batch: the same bits
    assert features(x).dtype == np.float32 and whole.shape == (100, 32)
