"""``ddim`` checks every value before any work starts and names it as a flag, in one line with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ddim.app.cli import main
from ddim.app.digits import DigitsUNet, UNetConfig

#: The config of a tiny diffusers UNet2DModel, for pipeline folders.
UNET_CONFIG = {
    "_class_name": "UNet2DModel",
    "sample_size": 8,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [8, 16],
    "norm_num_groups": 4,
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D"],
}


def pipeline_folder(tmp_path: Path, scheduler_config: str) -> Path:
    """A pipeline folder of a tiny UNet whose weights are garbage and whose scheduler config is ``scheduler_config``."""
    pipe = tmp_path / "pipe"
    (pipe / "unet").mkdir(parents=True)
    (pipe / "scheduler").mkdir()
    (pipe / "model_index.json").write_text("{}")
    (pipe / "unet" / "config.json").write_text(json.dumps(UNET_CONFIG))
    (pipe / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    (pipe / "scheduler" / "scheduler_config.json").write_text(scheduler_config)
    return pipe


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``ddim ARGV``."""
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["sample", "--device", "meta"], ["--device 'meta' is not supported", "cpu, cuda, cuda:N"]),
        (["sample", "--device", "cpu:1"], ["--device 'cpu:1' is not available"]),
        (["sample", "--device", ""], ["--device '' is not supported"]),
        (["sample", "--device", "tpu"], ["--device 'tpu' is not supported"]),
        (["sample", "--device", "mkldnn"], ["--device 'mkldnn' is not supported"]),
        (["sample", "--scale", "10000000"], ["the PNG would be", "over 16384 a side; lower --scale or -n"]),
        (["sample", "-n", "1000000"], ["the PNG would be", "--out-dir"]),
        (["interpolate", "--frames", "100000"], ["the PNG would be", "lower --frames"]),
        (["sample", "--steps", "2000"], ["--steps 2000 is out of range; allowed values are 1..1000 (the model's"]),
        (["interpolate", "--steps", "2000"], ["--steps 2000 is out of range; allowed values are 1..1000"]),
        (["invert", "--steps", "2000"], ["--steps 2000 is out of range; allowed values are 1..1000"]),
        (["sample", "--seed", "4294967296"], ["argument --seed: 4294967296 is not allowed", "0..4294967295"]),
        (["interpolate", "--seeds", "0", "-1"], ["argument --seeds: -1 is not allowed"]),
        (["sample", "--eta", "nan"], ["argument --eta: nan is not allowed"]),
        (["sample", "--spacing", "sideways"], ["argument --spacing: invalid choice: 'sideways'"]),
        (["invert", "--first", "-1"], ["argument --first: -1 is not allowed; it must be an integer >= 0"]),
        (["invert", "--first", "295", "-n", "3"], ["--first 295 with -n 3 runs past the 297", "0..294"]),
        (["invert", "-n", "298"], ["argument -n/--num-images: 298 is not allowed", "1..297"]),
        (["invert", "--fixed-point-iterations", "-1"], ["argument --fixed-point-iterations: -1 is not allowed"]),
        (["sample", "--bogus"], ["unrecognized arguments: --bogus"]),
    ],
)
def test_bad_values_are_one_line_errors_in_flag_names(
    argv: list[str], fragments: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.png"
    code, _, err = cli([*argv, "--no-progress", "-o", str(out)], capsys)
    assert_one_line_error(code, err, *fragments)
    assert list(tmp_path.iterdir()) == []


def test_an_unavailable_cuda_device_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on the CPU build of PyTorch
    for command in ("sample", "invert", "interpolate"):
        code, _, err = cli([command, "--device", "cuda", "--no-progress", "-o", str(tmp_path / "o.png")], capsys)
        assert_one_line_error(code, err, f"ddim {command}: error: --device 'cuda' is not available")
    code, _, err = cli(["eval", "--device", "cuda:1", "--no-progress", "--out-dir", str(tmp_path)], capsys)
    assert_one_line_error(code, err, "--device 'cuda:1' is not available")
    assert list(tmp_path.iterdir()) == []


def test_global_options_after_the_subcommand_get_a_hint(capsys: pytest.CaptureFixture[str]) -> None:
    for option in (["--threads", "2"], ["--threads=2"], ["--version"]):
        code, _, err = cli(["sample", *option], capsys)
        name = option[0].split("=")[0]
        assert_one_line_error(code, err, "unrecognized arguments", f"{name} is an option of ddim itself")
        assert "before the subcommand" in err
    code, _, err = cli(["sample", "--bogus", "1"], capsys)
    assert_one_line_error(code, err, "unrecognized arguments: --bogus 1")
    assert "option of ddim itself" not in err


def test_parser_errors_help_and_version_return_their_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli([], capsys)
    assert_one_line_error(code, err, "ddim: error: the following arguments are required: COMMAND")
    code, _, err = cli(["--threads", "0", "sample"], capsys)
    assert_one_line_error(code, err, "argument --threads: 0 is not allowed")
    code, _, err = cli(["--threads", "1000000", "sample"], capsys)
    assert_one_line_error(code, err, "argument --threads: 1000000 is not allowed")
    code, out, _ = cli(["--version"], capsys)
    assert code == 0 and out.startswith("ddim ")
    code, out, _ = cli(["sample", "--help"], capsys)
    assert code == 0 and "--steps" in out


def test_a_sibling_config_asking_for_a_huge_unet_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = tmp_path / "big.safetensors"
    save_file({k: v.contiguous() for k, v in DigitsUNet(UNetConfig(channels=8)).state_dict().items()}, str(weights))
    (tmp_path / "big.json").write_text(json.dumps({"unet": {"channels": 1000000}}))
    code, _, err = cli(["sample", "--model", str(weights), "--no-progress", "-o", str(tmp_path / "o.png")], capsys)
    assert_one_line_error(code, err, "big.json", "channels=1000000 is out of range; allowed values are 1..1024")


def test_train_checks_its_values_before_the_progress_bar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import ddim.app.cli.train as train_command

    def no_training(*args: object) -> None:
        raise AssertionError("training started")

    monkeypatch.setattr(train_command, "train", no_training)
    out = str(tmp_path / "w.safetensors")
    for argv, fragment in (
        (["--channels", "3"], "--channels 3 must be a multiple of 8"),
        (["--channels", "2048"], "argument --channels: 2048 is not allowed"),
        (["--learning-rate", "0"], "argument --learning-rate: 0.0 is not allowed"),
        (["--ema-decay", "1"], "argument --ema-decay: 1.0 is not allowed"),
        (["--warmup-steps", "-1"], "argument --warmup-steps: -1 is not allowed"),
        (["--seed", "-1"], "argument --seed: -1 is not allowed"),
    ):
        code, _, err = cli(["train", *argv, "--steps", "2", "-o", out], capsys)  # progress bar enabled
        assert_one_line_error(code, err, fragment)
    assert list(tmp_path.iterdir()) == []


def test_eval_creates_its_default_folder_but_no_other(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["eval", "--quick", "--counts", "2:4", "--etas", "0", "--no-progress"]
    code, out, err = cli(argv, capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["table1.json", "table1.md", "table1.png"]
    assert "wrote eval/table1.json" in out
    code, _, err = cli([*argv, "--out-dir", "missing"], capsys)
    assert_one_line_error(code, err, "--out-dir 'missing' is not an existing folder")
    assert not (tmp_path / "missing").exists()


def test_eval_checks_the_seed_range_and_steps_before_sampling(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["eval", "--counts", "2:4", "--etas", "0", "--no-progress", "--out-dir", str(tmp_path)]
    code, _, err = cli([*argv, "--first-seed", "4294967295", "--seeds", "2"], capsys)
    assert_one_line_error(code, err, "--first-seed 4294967295 + --seeds 2 must be at most 2**32")
    code, _, err = cli([*argv, "--seeds", "100000"], capsys)
    assert_one_line_error(code, err, "argument --seeds: 100000 is not allowed")
    assert list(tmp_path.iterdir()) == []


def test_a_broken_pipeline_folder_prints_only_our_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("diffusers")
    pipe = pipeline_folder(tmp_path, "{}")
    out = tmp_path / "o.png"
    code, _, err = cli(["sample", "--model", str(pipe), "--no-progress", "-o", str(out)], capsys)
    assert_one_line_error(code, err, f"--model {str(pipe)!r} cannot be loaded")
    assert "accelerate" not in err
    (pipe / "scheduler" / "scheduler_config.json").write_text(json.dumps({"beta_end": 1.5}))
    code, _, err = cli(["sample", "--model", str(pipe), "--no-progress", "-o", str(out)], capsys)
    assert_one_line_error(code, err, "scheduler config", "beta_end=1.5 is out of range")
    assert not out.exists()
