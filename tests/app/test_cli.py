"""The ``ddim`` command line end to end on small settings, in temporary folders."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import make_tiny_unet
from ddim.app.cli import main
from ddim.app.digits import DigitsUNet, UNetConfig


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)  # argparse errors, --help and --version return their exit code too
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.load()
        return image.size


GAP = 3  # pixels between cells and around the grid


def grid_side(count: int, scale: int, size: int = 8) -> int:
    # count cells of size*scale pixels with GAP-pixel gaps and border
    return count * (size * scale + GAP) + GAP


def test_sample_writes_an_upscaled_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "grid.png"
    code, stdout, _ = run(["sample", "-n", "4", "--steps", "3", "--no-progress", "-o", str(out)], capsys)
    assert code == 0
    assert f"wrote {out}" in stdout and " s" in stdout
    assert png_size(out) == (grid_side(2, 6), grid_side(2, 6))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]


def test_sample_does_not_depend_on_the_batch_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = []
    for batch in ("1", "3"):
        out = tmp_path / f"b{batch}.png"
        assert (
            run(
                [
                    "sample",
                    "-n",
                    "3",
                    "--steps",
                    "2",
                    "--eta",
                    "1",
                    "--batch-size",
                    batch,
                    "--no-progress",
                    "-o",
                    str(out),
                ],
                capsys,
            )[0]
            == 0
        )
        images.append(Image.open(out).tobytes())
    assert images[0] == images[1]


def test_different_seeds_give_different_samples(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = []
    for seed in ("0", "1"):
        out = tmp_path / f"s{seed}.png"
        assert (
            run(["sample", "-n", "2", "--steps", "2", "--seed", seed, "--no-progress", "-o", str(out)], capsys)[0] == 0
        )
        images.append(Image.open(out).tobytes())
    assert images[0] != images[1]


@pytest.mark.slow
def test_python_dash_m_ddim_runs(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "ddim", "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    for command in ("sample", "invert", "interpolate", "eval", "train"):
        assert command in result.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sample", "--steps", "0"], "--steps: 0 is not allowed"),
        (["sample", "-n", "-2"], "-n/--num-samples: -2 is not allowed"),
        (["sample", "--eta", "-0.5"], "--eta: -0.5 is not allowed"),
        (["sample", "--seed", "-1"], "--seed: -1 is not allowed"),
        (["sample", "--steps", "1001"], "--steps 1001 is out of range; allowed values are 1..1000"),
        (["sample", "--model", "does/not/exist.safetensors"], "does not exist"),
        (["invert", "--steps", "0"], "--steps: 0 is not allowed"),
        (["interpolate", "--frames", "0"], "--frames: 0 is not allowed"),
        (["invert", "--fixed-point-iterations", "1001"], "--fixed-point-iterations: 1001 is not allowed"),
        (["invert", "--fixed-point-iterations", "99999999999999999999"], "must be an integer in 0..1000"),
    ],
)
def test_user_errors_exit_2_with_a_message(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.png"
    code, _, err = run([*argv, "--no-progress", "-o", str(out)], capsys)
    assert code == 2
    assert message in err
    assert len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_sharded_sampling_names_the_steps_flag_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "shards"
    code, _, err = run(["sample", "-n", "4", "--steps", "2000", "--no-progress", "--out-dir", str(out_dir)], capsys)
    assert code == 2
    assert "--steps 2000 is out of range" in err
    assert "num_inference_steps" not in err
    assert len(err.splitlines()) == 1
    assert not out_dir.exists()


class Trap:
    """Unpickling this object would create the file ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.path, "w"))


def test_pickle_model_files_are_refused_unread(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "unpickled"
    for name, dump in (
        ("raw.bin", lambda f: pickle.dump(Trap(str(marker)), f)),
        ("torch.pt", lambda f: torch.save({"x": Trap(str(marker))}, f)),
    ):
        model = tmp_path / name
        with model.open("wb") as handle:
            dump(handle)
        code, _, err = run(["sample", "--model", str(model), "--no-progress", "-o", str(tmp_path / "o.png")], capsys)
        assert code == 2 and "pickle" in err
    assert not marker.exists()
    assert not (tmp_path / "o.png").exists()


def test_weights_with_wrong_shapes_or_names_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import save_file

    wrong = tmp_path / "wrong.safetensors"
    state = DigitsUNet(UNetConfig(channels=16)).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(wrong))  # shipped config says channels=48
    code, _, err = run(["sample", "--model", str(wrong), "--no-progress", "-o", str(tmp_path / "o.png")], capsys)
    assert code == 2 and "has shape" in err
    save_file({"nonsense": torch.zeros(1)}, str(wrong))
    code, _, err = run(["sample", "--model", str(wrong), "--no-progress", "-o", str(tmp_path / "o.png")], capsys)
    assert code == 2 and "missing tensors" in err
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00\x01not a safetensors file")
    code, _, err = run(
        ["sample", "--model", str(tmp_path / "garbage.safetensors"), "-o", str(tmp_path / "o.png")], capsys
    )
    assert code == 2 and "not a readable safetensors file" in err
    assert not (tmp_path / "o.png").exists()


def test_unwritable_output_exits_2_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run(["sample", "-n", "1", "--steps", "1", "-o", str(tmp_path / "missing" / "o.png")], capsys)
    assert code == 2 and "does not exist" in err

    def failing_save(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        Path(str(fp)).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", failing_save)
    code, _, err = run(["sample", "-n", "1", "--steps", "1", "--no-progress", "-o", str(tmp_path / "o.png")], capsys)
    assert code == 2 and "No space left on device" in err
    assert list(tmp_path.iterdir()) == []


def test_invert_reconstructs_held_out_digits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "inv.png"
    code, stdout, _ = run(["invert", "-n", "3", "--steps", "20", "--no-progress", "-o", str(out)], capsys)
    assert code == 0
    rmse = float(stdout.split("RMSE ")[1].split(",")[0])
    assert rmse < 0.25  # pixel range is 2; an unrelated digit is ~0.8 away
    assert png_size(out) == (grid_side(3, 6), grid_side(2, 6))


def test_invert_shows_progress_for_both_halves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["invert", "-n", "1", "--steps", "2", "-o", str(tmp_path / "inv.png")], capsys)
    assert code == 0
    assert "DDIM inversion" in err and "DDIM sampling" in err


def test_interpolate_writes_a_strip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "strip.png"
    code, _, _ = run(["interpolate", "--frames", "5", "--steps", "3", "--no-progress", "-o", str(out)], capsys)
    assert code == 0
    assert png_size(out) == (grid_side(5, 6), grid_side(1, 6))


def test_interpolation_ends_are_the_seeds_first_samples(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    strip, single = tmp_path / "strip.png", tmp_path / "one.png"
    assert (
        run(
            ["interpolate", "--seeds", "4", "7", "--frames", "2", "--steps", "3", "--no-progress", "-o", str(strip)],
            capsys,
        )[0]
        == 0
    )
    assert run(["sample", "-n", "1", "--seed", "7", "--steps", "3", "--no-progress", "-o", str(single)], capsys)[0] == 0
    cell = 8 * 6
    last = Image.open(strip).crop((GAP + (cell + GAP), GAP, GAP + (cell + GAP) + cell, GAP + cell))
    only = Image.open(single).crop((GAP, GAP, GAP + cell, GAP + cell))
    assert last.tobytes() == only.tobytes()


@pytest.mark.slow
def test_eval_writes_table_json_markdown_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    code, stdout, _ = run(
        [
            "eval",
            "--counts",
            "2:20",
            "4:20",
            "--etas",
            "0",
            "1",
            "--seeds",
            "2",
            "--no-progress",
            "--out-dir",
            str(tmp_path),
        ],
        capsys,
    )
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table1.json", "table1.md", "table1.png"]
    report = json.loads((tmp_path / "table1.json").read_text())
    assert {(c["steps"], c["eta"], c["count"]) for c in report["cells"]} == {
        (2, 0.0, 20),
        (4, 0.0, 20),
        (2, 1.0, 20),
        (4, 1.0, 20),
    }
    assert all(len(c["fids"]) == 2 for c in report["cells"])
    assert "| | S=2 (N=20) | S=4 (N=20) |" in stdout
    assert png_size(tmp_path / "table1.png")[0] > 300
    assert report["ddpm_count"] is None and report["batch_size"] == 500


@pytest.mark.slow
def test_eval_runs_the_ddpm_comparison_at_its_own_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    tiny = tmp_path / "tiny.safetensors"  # 1000 DDPM steps: a tiny model keeps this test fast
    train = ["train", "--steps", "1", "--channels", "8", "--batch-size", "4", "--no-progress", "-o", str(tiny)]
    assert run(train, capsys)[0] == 0
    argv = ["eval", "--counts", "3:8", "--etas", "0", "--seeds", "1", "--ddpm-count", "3", "--batch-size", "3"]
    code, stdout, _ = run([*argv, "--model", str(tiny), "--no-progress", "--out-dir", str(tmp_path)], capsys)
    assert code == 0
    report = json.loads((tmp_path / "table1.json").read_text())
    assert [(c["steps"], c["eta"], c["count"]) for c in report["cells"]] == [(3, 0.0, 8), (50, 0.0, 3), (1000, 1.0, 3)]
    assert report["ddpm_count"] == 3 and report["batch_size"] == 3
    assert [t["target"] for t in report["targets"]] == ["DDIM S=50 eta=0 within 1.5x of DDPM (1000 steps)"]
    assert "| DDPM (S=1000, eta=1) | 3 |" in stdout


@pytest.mark.slow
def test_eval_first_seed_adds_seeds_that_match_a_run_from_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    def fids(seeds: str, first: str) -> tuple[list[int], list[float]]:
        argv = ["eval", "--counts", "2:20", "--etas", "0", "--seeds", seeds, "--first-seed", first]
        assert run([*argv, "--no-progress", "--out-dir", str(tmp_path)], capsys)[0] == 0
        report = json.loads((tmp_path / "table1.json").read_text())
        return report["seeds"], report["cells"][0]["fids"]

    seeds_from_zero, from_zero = fids("2", "0")
    seeds_added, added = fids("1", "1")
    assert seeds_from_zero == [0, 1] and seeds_added == [1]
    assert added == pytest.approx(from_zero[1:], rel=1e-9)
    assert from_zero[0] != pytest.approx(from_zero[1], rel=1e-3)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--ddpm-count", "1", "N must be in 2..100000"),
        ("--ddpm-count", "x", "is not an integer"),
        ("--batch-size", "0", "--batch-size"),
        ("--first-seed", "-1", "--first-seed"),
    ],
)
def test_eval_rejects_bad_counts(option: str, value: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["eval", "--quick", option, value], capsys)
    assert code == 2 and message in err


def test_eval_rejects_a_missing_output_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["eval", "--quick", "--out-dir", str(tmp_path / "nope")], capsys)
    assert code == 2 and "--out-dir" in err


def test_train_writes_weights_that_sample_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "tiny.safetensors"
    code, _, _ = run(
        ["train", "--steps", "2", "--channels", "8", "--batch-size", "4", "--no-progress", "-o", str(weights)], capsys
    )
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.json", "tiny.safetensors"]
    out = tmp_path / "s.png"
    assert (
        run(["sample", "--model", str(weights), "-n", "2", "--steps", "2", "--no-progress", "-o", str(out)], capsys)[0]
        == 0
    )
    assert out.is_file()


@pytest.mark.filterwarnings("ignore:config keys")
def test_diffusers_pipeline_folder_runs_with_our_scheduler(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    diffusers = pytest.importorskip("diffusers")
    unet = make_tiny_unet()
    pipeline = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler())
    pipeline.save_pretrained(tmp_path / "pipe", safe_serialization=True)
    out = tmp_path / "rgb.png"
    code, stdout, err = run(
        ["sample", "--model", str(tmp_path / "pipe"), "-n", "2", "--steps", "2", "--no-progress", "-o", str(out)],
        capsys,
    )
    assert code == 0 and "diffusers pipeline" in stdout
    assert "clip_sample=True" in err  # DDPMScheduler's default config: the user is warned about the trap
    assert "see docs/evaluation.md, 'The clip_sample trap'" in err  # where the trap is explained
    with Image.open(out) as image:
        assert image.mode == "RGB" and image.size == (grid_side(2, 6), grid_side(1, 6))
    for weights in (tmp_path / "pipe" / "unet").glob("*.safetensors"):
        weights.rename(weights.with_suffix(".bin"))
    code, _, err = run(["sample", "--model", str(tmp_path / "pipe"), "-o", str(tmp_path / "x.png")], capsys)
    assert code == 2 and "pickle" in err
