"""The class-conditional digits model: labels in the UNet, its schedule, training, shipped weights and ``--digit``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from ddim.app.cli import main
from ddim.app.digits import (
    CONDITIONAL_CONFIG_NAME,
    CONDITIONAL_WEIGHTS_NAME,
    NULL_LABEL,
    SAMPLE_SHAPE,
    DigitsUNet,
    UNetConfig,
    load_model,
    load_pretrained,
    sample_digits,
    weights_dir,
)
from ddim.app.digits.conditional import check_digits, scheduler_config
from ddim.app.digits.conditional_training import ConditionalTrainConfig, drop_labels, train_conditional
from ddim.app.digits.training import save_model

TINY = ConditionalTrainConfig(steps=3, batch_size=8, channels=8, time_dim=16, warmup_steps=1, ema_decay=0.5)

# Per-image (mean, std) of sample_digits(model, scheduler, [0, 3, 7, 9], steps=10, generator=
# torch.Generator().manual_seed(1234)) with the shipped conditional weights and the default guidance
# (s = 1.5, phi = 0.7), computed once after the weights were trained (PyTorch 2.13 CPU, one thread).
# Tolerance covers other BLAS/CPU kernels.
REFERENCE_STATS = [(-0.51492, 0.59327), (-0.3621, 0.79204), (-0.41125, 0.75705), (-0.35809, 0.7174)]
REFERENCE_TOLERANCE = 2e-3


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def tiny_conditional(tmp_path: Path, name: str = "cond.safetensors") -> Path:
    """A tiny conditional UNet with the shipped schedule, saved with its config (no training)."""
    torch.manual_seed(0)
    config = UNetConfig(channels=8, time_dim=16, num_classes=11)
    weights, _ = save_model(
        DigitsUNet(config), {"unet": config.to_dict(), "scheduler": scheduler_config()}, tmp_path / name
    )
    return weights


# --------------------------------------------------------------------------- the network
def test_a_conditional_unet_takes_labels_per_row_or_one_for_all() -> None:
    model = DigitsUNet(UNetConfig(channels=8, time_dim=16, num_classes=11)).eval()
    x = torch.randn(3, *SAMPLE_SHAPE)
    with torch.no_grad():
        same = model(x, 5, 7)
        assert torch.equal(same, model(x, torch.tensor([5, 5, 5]), torch.tensor([7, 7, 7])))
        assert not torch.allclose(same, model(x, 5, NULL_LABEL))
    for labels, error, message in (
        (None, ValueError, "labels are needed"),
        (11, ValueError, r"labels must lie in 0\.\.10, got 11\.\.11"),
        (torch.tensor([1, 2]), ValueError, r"shape \(3,\)"),
        (torch.tensor([1.0, 2.0, 3.0]), TypeError, "labels must be integers"),
    ):
        with pytest.raises(error, match=message):
            model(x, 5, labels)


def test_the_unconditional_unet_is_unchanged_and_refuses_labels() -> None:
    model = DigitsUNet(UNetConfig(channels=8))
    assert not any("class_embedding" in name for name in model.state_dict())
    assert UNetConfig(channels=8).to_dict() == {"channels": 8, "time_dim": 64, "groups": 8}
    with pytest.raises(ValueError, match="unconditional"):
        model(torch.randn(1, *SAMPLE_SHAPE), 3, 1)
    with pytest.raises(ValueError, match="num_classes=1 is not allowed"):
        UNetConfig(num_classes=1)
    with pytest.raises(ValueError, match="num_classes=2000 is out of range"):
        UNetConfig(num_classes=2000)


# --------------------------------------------------------------------------- schedule and training
def test_the_schedule_is_stable_diffusions_rescaled_to_zero_terminal_snr() -> None:
    assert scheduler_config() == {
        "num_train_timesteps": 1000,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "rescale_betas_zero_snr": True,
        "prediction_type": "v_prediction",
        "timestep_spacing": "trailing",
        "clip_sample": False,
    }
    assert scheduler_config(zero_snr=False)["rescale_betas_zero_snr"] is False


def test_labels_are_dropped_to_the_null_label_with_the_given_probability() -> None:
    labels = torch.arange(10).repeat(2000)
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(drop_labels(labels, 0.0, generator), labels)
    assert bool((drop_labels(labels, 1.0, generator) == NULL_LABEL).all())
    dropped = drop_labels(labels, 0.1, generator)
    assert abs(float((dropped == NULL_LABEL).float().mean()) - 0.1) < 0.01
    assert torch.equal(dropped[dropped != NULL_LABEL], labels[dropped != NULL_LABEL])


@pytest.mark.parametrize("zero_snr", [True, False])
def test_a_few_training_steps_run_are_seeded_and_save_a_loadable_model(zero_snr: bool, tmp_path: Path) -> None:
    config = ConditionalTrainConfig(**{**TINY.__dict__, "zero_snr": zero_snr})
    losses: list[float] = []
    first, info = train_conditional(config, lambda step, loss: losses.append(loss))
    second, _ = train_conditional(config)
    assert len(losses) == 3 and all(0 < loss < 10 for loss in losses)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert info["scheduler"] == scheduler_config(zero_snr) and info["unet"]["num_classes"] == 11
    assert info["training"]["zero_snr"] is zero_snr
    loaded, scheduler = load_model(save_model(first, info, tmp_path / "c.safetensors")[0])
    assert scheduler.config.rescale_betas_zero_snr is zero_snr
    assert (float(scheduler.alphas_cumprod[-1]) == 0.0) is zero_snr
    x, t = torch.randn(2, *SAMPLE_SHAPE), torch.tensor([3, 999])
    with torch.no_grad():
        assert torch.equal(loaded(x, t, torch.tensor([1, 10])), first(x, t, torch.tensor([1, 10])))


def test_bad_training_values_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"label_dropout=1\.5"):
        ConditionalTrainConfig(label_dropout=1.5)
    with pytest.raises(TypeError, match="zero_snr must be a bool"):
        ConditionalTrainConfig(zero_snr=1)  # type: ignore[arg-type]


def test_ddim_train_conditional_is_train_conditional(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "c.safetensors"
    argv = ["train", "--conditional", "--no-zero-snr", "--steps", "3", "--channels", "8", "--batch-size", "8"]
    code, stdout, _ = cli([*argv, "--warmup-steps", "1", "--ema-decay", "0.5", "--no-progress", "-o", str(out)], capsys)
    assert code == 0 and "wrote" in stdout
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["training"] == {**TINY.__dict__, "time_dim": 128, "zero_snr": False}
    expected, _ = train_conditional(ConditionalTrainConfig(**info["training"]))
    loaded, _ = load_model(out)
    for (name, a), b in zip(loaded.state_dict().items(), expected.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


# --------------------------------------------------------------------------- sampling
def test_sample_digits_checks_its_arguments(tmp_path: Path) -> None:
    model, scheduler = load_model(tiny_conditional(tmp_path))
    assert check_digits([0, 9]).tolist() == [0, 9]
    for digits, error, message in (
        ([10], ValueError, r"digits must lie in 0\.\.9, got 10"),
        ([], ValueError, "at least one digit"),
        ("7", TypeError, "sequence of ints"),
        ([1.5], TypeError, "sequence of ints"),
    ):
        with pytest.raises(error, match=message):
            sample_digits(model, scheduler, digits)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"guidance_scale=-1\.0"):
        sample_digits(model, scheduler, [1], guidance_scale=-1.0)
    x = sample_digits(model, scheduler, [1, 2], steps=2, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 1, 8, 8) and bool(torch.isfinite(x).all())


def test_the_shipped_conditional_model_loads_with_its_schedule() -> None:
    weights = weights_dir() / CONDITIONAL_WEIGHTS_NAME
    assert weights.stat().st_size <= 5 * 2**20
    model, scheduler = load_pretrained(conditional=True)
    assert model.config.num_classes == 11 and not model.training
    info = json.loads((weights_dir() / CONDITIONAL_CONFIG_NAME).read_text())
    assert info["scheduler"] == scheduler_config()
    assert scheduler.config.prediction_type == "v_prediction" and scheduler.config.timestep_spacing == "trailing"
    assert float(scheduler.alphas_cumprod[-1]) == 0.0


def test_a_short_seeded_conditional_sample_matches_the_recorded_statistics() -> None:
    model, scheduler = load_pretrained(conditional=True)
    x = sample_digits(model, scheduler, [0, 3, 7, 9], steps=10, generator=torch.Generator().manual_seed(1234))
    stats = [(float(image.mean()), float(image.std())) for image in x]
    for (mean, std), (ref_mean, ref_std) in zip(stats, REFERENCE_STATS, strict=True):
        assert mean == pytest.approx(ref_mean, abs=REFERENCE_TOLERANCE), stats
        assert std == pytest.approx(ref_std, abs=REFERENCE_TOLERANCE), stats


# --------------------------------------------------------------------------- ddim sample --digit
GAP = 3


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def test_sample_digit_writes_one_row_per_digit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny_conditional(tmp_path)
    out = tmp_path / "rows.png"
    common = ["--model", str(model), "--steps", "2", "--no-progress", "--scale", "1", "--force"]
    code, stdout, _ = cli(["sample", "--digit", "1", "2", "-n", "3", *common, "-o", str(out)], capsys)
    assert code == 0 and "digit(s) 1 2" in stdout and "guidance 1.5, rescale 0.7" in stdout
    assert png_size(out) == (3 * (8 + GAP) + GAP, 2 * (8 + GAP) + GAP)
    code, _, _ = cli(["sample", "--digit", "all", "-n", "1", *common, "-o", str(out)], capsys)
    assert code == 0 and png_size(out) == (8 + 2 * GAP, 10 * (8 + GAP) + GAP)
    code, _, _ = cli(["sample", "--digit", "4", "-n", "4", "--guidance-scale", "1", *common, "-o", str(out)], capsys)
    assert code == 0 and png_size(out) == (2 * (8 + GAP) + GAP, 2 * (8 + GAP) + GAP)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--digit", "10"], "argument --digit: 10 is not allowed"),
        (["--digit", "-1"], "argument --digit: -1 is not allowed"),
        (["--digit", "seven"], "argument --digit: 'seven' is not an integer"),
        (["--digit", "7", "--guidance-scale", "-1"], "argument --guidance-scale: -1.0 is not allowed"),
        (["--digit", "7", "--guidance-rescale", "1.5"], "argument --guidance-rescale: 1.5 is not allowed"),
        (["--guidance-scale", "2"], "--guidance-scale needs --digit"),
        (["--guidance-rescale", "0.5"], "--guidance-rescale needs --digit"),
        (["--digit", "random"], "--digit random needs --out-dir"),
        (["--digit", "7", "--out-dir", "shards", "--model", "UNCONDITIONAL"], "is an unconditional digits UNet"),
        (["--digit", "7", "--model", "UNCONDITIONAL"], "is an unconditional digits UNet; --digit needs"),
        (["--model", "CONDITIONAL"], "is a class-conditional digits UNet; sample it with `ddim sample --digit`"),
        (["--digit", "7", "--steps", "1001"], "--steps 1001 is out of range"),
    ],
)
def test_bad_digit_options_are_one_line_errors_and_write_nothing(
    argv: list[str], fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    conditional = tiny_conditional(models)
    unconditional = models / "u.safetensors"
    config = UNetConfig(channels=8)
    save_model(DigitsUNet(config), {"unet": config.to_dict(), "scheduler": {"clip_sample": False}}, unconditional)
    names = {"UNCONDITIONAL": str(unconditional), "CONDITIONAL": str(conditional), "shards": str(tmp_path / "shards")}
    argv = [names.get(arg, arg) for arg in argv]
    code, stdout, err = cli(["sample", *argv, "--no-progress", "-o", str(tmp_path / "o.png")], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and fragment in err, err
    assert stdout == "" and sorted(p.name for p in tmp_path.iterdir()) == ["models"]


def test_train_no_zero_snr_needs_conditional(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(["train", "--no-zero-snr", "--no-progress", "-o", str(tmp_path / "w.safetensors")], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "--no-zero-snr needs --conditional" in err
    assert list(tmp_path.iterdir()) == []
