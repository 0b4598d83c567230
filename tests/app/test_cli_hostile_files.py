"""``ddim`` given tampered model files: pipeline folders whose configs are deep, malformed, special files or out of
range, and a conditional model with too few labels for ``--digit``. Each is one line naming the file or flag, exit 2,
and nothing written."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from safetensors.torch import save_file
from test_cli_validation import assert_one_line_error, cli, pipeline_folder

from ddim.app.digits import DigitsUNet, UNetConfig


@pytest.mark.parametrize(
    ("scheduler_config", "fragment"),
    [
        ("[" * 50_000 + "]" * 50_000, "scheduler_config.json nests JSON 50000 levels deep; at most 16 allowed"),
        ('{"_use_default_values": 7}', "scheduler_config.json: _use_default_values must be a list of config key"),
        ('{"_use_default_values": [["beta_start"]]}', "_use_default_values must be a list of config key names"),
        ('{"steps_offset": 1e30}', "scheduler_config.json: steps_offset must be an int, got 1e+30"),
        ('{"steps_offset": 1' + "0" * 30 + "}", "scheduler_config.json: steps_offset=1" + "0" * 30 + " is out of"),
        ('{"num_train_timesteps": 1' + "0" * 30 + "}", "num_train_timesteps=1" + "0" * 30 + " is out of range"),
        ('{"num_train_timesteps": 1' + "0" * 100 + "}", "holds an integer of 101 digits; at most 40"),
        ('{"trained_betas": ["x"]}', "scheduler_config.json: trained_betas must be a 1-D sequence of real numbers"),
        ('{"beta_start": "0.1"}', "scheduler_config.json: beta_start must be a real number, got '0.1'"),
    ],
)
def test_a_hostile_scheduler_config_is_one_line_naming_the_file_and_key(
    scheduler_config: str, fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("diffusers")
    pipe = pipeline_folder(tmp_path, scheduler_config)
    out = tmp_path / "o.png"
    code, _, err = cli(["sample", "--model", str(pipe), "-n", "1", "--steps", "2", "-o", str(out)], capsys)
    assert_one_line_error(code, err, fragment, str(pipe / "scheduler"))
    assert not out.exists()


@pytest.mark.skipif(sys.platform != "linux", reason="FIFOs and /dev/zero are POSIX's")
@pytest.mark.parametrize("name", ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors"])
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_pipeline_file_that_is_a_fifo_or_a_device_is_refused_before_diffusers_reads_it(
    name: str, kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("diffusers")
    pipe = pipeline_folder(tmp_path, "{}")
    target = pipe / name
    target.unlink()
    if kind == "fifo":
        os.mkfifo(target)
    else:
        target.symlink_to("/dev/zero")
    code, _, err = cli(
        ["sample", "--model", str(pipe), "-n", "1", "--steps", "2", "-o", str(tmp_path / "o.png")], capsys
    )
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "is a FIFO" in err or "is a character device" in err or "not a diffusers pipeline" in err


def test_digit_on_a_model_with_too_few_labels_names_the_flag_and_the_digits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = UNetConfig(channels=8, num_classes=5)
    weights = tmp_path / "five.safetensors"
    save_file(DigitsUNet(config).state_dict(), str(weights))
    (tmp_path / "five.json").write_text(json.dumps({"unet": {"channels": 8, "num_classes": 5}}))
    out = tmp_path / "o.png"
    code, _, err = cli(["sample", "--digit", "1", "--model", str(weights), "--steps", "2", "-o", str(out)], capsys)
    assert_one_line_error(code, err, "--digit takes digits 0-9", "has only 5 labels (0..4)", "11 labels")
    assert "labels must lie" not in err and not out.exists()
