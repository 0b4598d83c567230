"""Model files under hostile input: safetensors detection, tensor checks, config checks (direct and via the CLI)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ddim.app.cli import main
from ddim.app.digits import DigitsUNet, UNetConfig, load_model, load_state_dict, unet_from_state_dict, weights_dir


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit code and stderr of ``ddim ARGV``."""
    code = main(argv)
    return code, capsys.readouterr().err


def header_length(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[:8], "little")


def save_with_header_length(tensors: dict[str, torch.Tensor], path: Path, wanted: int, modulo: int) -> int:
    """Save ``tensors`` with metadata padded until the header length N has N % modulo == wanted; returns N."""
    save_file(tensors, str(path))
    base = header_length(path)
    start = max(0, wanted - base - 64) if modulo > 2**16 else 0
    for pad in range(start, start + 2 * modulo + 64):
        save_file(tensors, str(path), metadata={"pad": "x" * pad})
        length = header_length(path)
        if length % modulo == wanted:
            return length
    raise AssertionError("no padding gave the wanted header length")


def small_state(channels: int = 8) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.contiguous() for k, v in DigitsUNet(UNetConfig(channels=channels)).state_dict().items()}


def test_safetensors_whose_length_starts_with_0x80_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shipped = load_state_dict(weights_dir() / "digits_unet.safetensors")
    padded = tmp_path / "padded.safetensors"
    length = save_with_header_length(shipped, padded, 0x80, 256)
    assert padded.read_bytes()[:1] == b"\x80" and length % 256 == 0x80
    state = load_state_dict(padded)
    assert all(torch.equal(state[k], shipped[k]) for k in shipped)
    code, err = cli(
        ["sample", "--model", str(padded), "-n", "1", "--steps", "1", "-o", str(tmp_path / "o.png")], capsys
    )
    assert code == 0, err


def test_safetensors_whose_length_starts_with_pk_loads(tmp_path: Path) -> None:
    tensors = {"t": torch.arange(4.0)}
    path = tmp_path / "pk.safetensors"
    assert save_with_header_length(tensors, path, 0x4B50, 2**20) == 0x4B50
    assert path.read_bytes()[:2] == b"PK"
    assert torch.equal(load_state_dict(path)["t"], tensors["t"])


class Trap:
    """Unpickling this object would create the file ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.path, "w"))


@pytest.mark.parametrize("kind", ["zip", "legacy", "pickle-protocol-2", "pickle-protocol-5"])
def test_torch_save_and_pickle_files_are_refused_unread(kind: str, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    path = tmp_path / "model.pt"
    payload = {"weight": torch.zeros(2), "trap": Trap(str(marker))}
    with path.open("wb") as handle:
        if kind == "zip":
            torch.save(payload, handle)
        elif kind == "legacy":
            torch.save(payload, handle, _use_new_zipfile_serialization=False)
        else:
            pickle.dump(payload, handle, protocol=int(kind[-1]))
    with pytest.raises(ValueError, match=r"pickle/PyTorch checkpoint; refused"):
        load_state_dict(path)
    assert not marker.exists()


def test_files_that_are_neither_are_not_called_checkpoints(tmp_path: Path) -> None:
    for content in (b"", b"\x80", b"\x80\x09 not a pickle protocol", b"PK\x05\x06", b"\x10" + b"\x00" * 7 + b"[1, 2]"):
        path = tmp_path / "odd.safetensors"
        path.write_bytes(content)
        with pytest.raises(ValueError, match="not a readable safetensors file"):
            load_state_dict(path)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.uint8])
def test_integer_or_bool_weights_are_refused(dtype: torch.dtype) -> None:
    state = small_state()
    state["out.bias"] = state["out.bias"].to(dtype)
    with pytest.raises(ValueError, match=rf"'out.bias' has dtype {dtype}; floating-point weights needed"):
        unet_from_state_dict(state, UNetConfig(channels=8))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(value: float) -> None:
    state = small_state()
    state["mid1.conv1.weight"][0, 0, 0, 0] = value
    with pytest.raises(ValueError, match=r"'mid1.conv1.weight' holds NaN or Inf"):
        unet_from_state_dict(state, UNetConfig(channels=8))


def test_weights_that_overflow_float32_are_refused() -> None:
    state = small_state()
    state["stem.bias"] = torch.full_like(state["stem.bias"], 1e300, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"'stem.bias' holds NaN or Inf values \(in float32\)"):
        unet_from_state_dict(state, UNetConfig(channels=8))


def test_half_precision_weights_load_as_float32() -> None:
    state = {k: v.half() for k, v in small_state().items()}
    model = unet_from_state_dict(state, UNetConfig(channels=8))
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"unet": {"channels": 1000000}}, "channels=1000000 is out of range; allowed values are 1..1024"),
        ({"unet": {"channels": 8, "time_dim": 100000}}, "time_dim=100000 is out of range; allowed values are 2..4096"),
        ({"unet": {"channels": 8, "time_dim": 63}}, "time_dim=63 must be even"),
        ({"unet": {"channels": "8"}}, "channels must be an int"),
        ({"unet": {"channels": 8, "depth": 3}}, "unknown UNet config keys ['depth']"),
        ({"unet": {"channels": 8}, "scheduler": {"beta_end": 1.5}}, "beta_end=1.5 is out of range"),
        ({"unet": {"channels": 8}, "scheduler": {"beta_start": 0}}, "beta_start=0.0 is out of range"),
        ({"unet": {"channels": 8}, "scheduler": {"beta_end": float("nan")}}, "beta_end=nan is out of range"),
        ({"unet": {"channels": 8}, "scheduler": {"num_train_timesteps": 10**9}}, "num_train_timesteps=1000000000"),
        ({"unet": {"channels": 8}, "scheduler": {"steps_offset": 10**30}}, "steps_offset=1000000000000000000000000"),
        (
            {"unet": {"channels": 8}, "scheduler": {"trained_betas": {"a": 1}}},
            "trained_betas must be a 1-D sequence of real numbers",
        ),
        ({"unet": {"channels": 8}, "scheduler": {"clip_sample": "yes"}}, "clip_sample must be a bool"),
        ({"unet": {"channels": 8}, "scheduler": {"bogus": 1}}, "unknown scheduler config keys ['bogus']"),
        ({"unet": {"channels": 8}, "scheduler": [1]}, "'scheduler' entry must be a JSON object"),
    ],
)
def test_hostile_configs_are_one_line_errors_naming_the_value(
    config: dict[str, object], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = tmp_path / "model.safetensors"
    save_file(small_state(), str(weights))
    (tmp_path / "model.json").write_text(json.dumps(config))
    with pytest.raises((ValueError, TypeError), match="model config") as error:
        load_model(weights)
    assert message in str(error.value)
    out = tmp_path / "o.png"
    code, err = cli(["sample", "--model", str(weights), "-n", "1", "--steps", "1", "-o", str(out)], capsys)
    assert code == 2 and message in err and "model.json" in err
    assert len(err.splitlines()) == 1 and not out.exists()


def test_a_valid_sibling_config_is_used(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "model.safetensors"
    save_file(small_state(), str(weights))
    config = {"unet": {"channels": 8}, "scheduler": {"clip_sample": False, "beta_end": 0.012, "_class_name": "x"}}
    (tmp_path / "model.json").write_text(json.dumps(config))
    model, scheduler = load_model(weights)
    assert model.config.channels == 8 and scheduler.config.beta_end == 0.012
