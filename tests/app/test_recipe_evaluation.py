"""The recipe evaluation: its measurements, cells, target checks, report and ``ddim eval --recipe``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ddim.app.cli import main
from ddim.app.digits import SAMPLE_SHAPE, DigitsUNet, UNetConfig, load_digits_split
from ddim.app.digits.conditional import scheduler_config
from ddim.app.digits.conditional_training import ConditionalTrainConfig, invert_randomly
from ddim.app.digits.sample_metrics import (
    OVEREXPOSURE_MARGIN,
    DigitsJudge,
    mean_brightness,
    overexposed_fraction,
    pixel_std,
)
from ddim.app.digits.training import save_model
from ddim.app.recipe_evaluation import (
    RecipeCell,
    ablation_cells,
    balanced_digits,
    brightness_summary,
    ddpm_cells,
    extreme_fraction,
    first_timestep_and_snr,
    sweep_cells,
    wasserstein,
)
from ddim.app.recipe_report import check_targets, read_parts
from ddim.scheduler import DDIMScheduler


@pytest.fixture(scope="module")
def judge() -> DigitsJudge:
    return DigitsJudge()


def tiny_conditional(folder: Path, name: str, zero_snr: bool = True) -> Path:
    torch.manual_seed(len(name))
    config = UNetConfig(channels=8, time_dim=16, num_classes=11)
    model_config = {"unet": config.to_dict(), "scheduler": scheduler_config(zero_snr)}
    return save_model(DigitsUNet(config), model_config, folder / name)[0]


# --------------------------------------------------------------------------- measurements
def test_overexposure_counts_pixels_beyond_one_grey_level_outside_the_range() -> None:
    x = torch.zeros(2, *SAMPLE_SHAPE)
    x[0, 0, 0, :3] = 1.2  # over
    x[1, 0, 5, 5] = -1.0 - OVEREXPOSURE_MARGIN - 1e-3  # over
    x[1, 0, 6, 6] = 1.1  # within one grey level: not counted
    x[1, 0, 7, 7] = -1.0  # the data's own black
    assert overexposed_fraction(x) == pytest.approx(4 / 128)
    assert overexposed_fraction(x, margin=0.0) == pytest.approx(5 / 128)


def test_brightness_is_the_clipped_mean_and_pixel_std_is_unclipped() -> None:
    x = torch.full((3, *SAMPLE_SHAPE), 2.0)
    x[1] = -0.5
    x[2, 0, :4] = -1.0
    x[2, 0, 4:] = 3.0
    assert mean_brightness(x).tolist() == pytest.approx([1.0, -0.5, 0.0])
    assert pixel_std(x).tolist() == pytest.approx([0.0, 0.0, 2.0])
    with pytest.raises(ValueError, match=r"samples must be a tensor of shape \(N, 1, 8, 8\), got \(3, 8, 8\)"):
        mean_brightness(x[:, 0])


def test_the_judge_recognises_real_digits_and_scores_them_far_below_noise(judge: DigitsJudge) -> None:
    split = load_digits_split()
    images, labels = split.test_images, split.test_labels
    assert judge.accuracy(images, labels) > 0.9
    assert judge.accuracy(images, (labels + 1) % 10) < 0.1
    real = judge.per_class_fid(images, labels)
    noise = judge.per_class_fid(torch.randn_like(images), labels)
    assert 0 < real < noise / 5
    floor = judge.per_class_floor(20, seed=0)
    assert 0 < floor["resampled"] < floor["noise"]


def test_the_judge_names_what_is_wrong(judge: DigitsJudge) -> None:
    images = load_digits_split().test_images[:20]
    with pytest.raises(ValueError, match=r"digits must have one entry per sample \(20\), got 19"):
        judge.accuracy(images, [1] * 19)
    with pytest.raises(ValueError, match=r"digits must lie in 0\.\.9, got 10"):
        judge.accuracy(images, [10] * 20)
    with pytest.raises(ValueError, match=">= 2 samples of every digit, got 0 of 2"):
        judge.per_class_fid(images, [0] * 10 + [1] * 10)
    with pytest.raises(ValueError, match=r"one entry per sample \(20\), got 30"):
        judge.per_class_fid(images, balanced_digits(3))


def test_brightness_summary_extremes_and_distance() -> None:
    values = torch.linspace(-0.9, 0.9, 1001)
    summary = brightness_summary(values)
    assert sum(summary["histogram"]) == 1001
    quantiles = list(summary["quantiles"].values())
    assert quantiles == sorted(quantiles)
    assert extreme_fraction(values.tolist(), summary) == pytest.approx(0.10, abs=0.003)
    assert extreme_fraction([0.0] * 10, summary) == 0.0
    assert wasserstein(values.tolist(), values) == 0.0
    assert wasserstein((values + 0.25).tolist(), values) == pytest.approx(0.25)


# --------------------------------------------------------------------------- cells
def test_the_grids_first_timestep_and_its_snr() -> None:
    zero_snr = DDIMScheduler(**scheduler_config(True))
    control = DDIMScheduler(**scheduler_config(False))
    leading = DDIMScheduler(**{**scheduler_config(True), "timestep_spacing": "leading"})
    assert first_timestep_and_snr(zero_snr, 10) == (999, 0.0)
    first, snr = first_timestep_and_snr(leading, 10)
    assert first == 900 and snr > 1e-3
    abar = float(control.alphas_cumprod[999])
    assert first_timestep_and_snr(control, 25) == (999, pytest.approx(abar / (1 - abar)))
    assert 4e-3 < abar < 5e-3  # Stable Diffusion's terminal abar, 0.0047


def test_the_parts_cells_cover_the_grids_of_the_evaluation() -> None:
    sweep = sweep_cells(50)
    assert len(sweep) == 14 and {c.guidance_rescale for c in sweep} == {0.0, 0.7}
    assert {c.guidance_scale for c in sweep} == {0.0, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0}
    ablation = ablation_cells(50)
    assert len({(c.model, c.spacing, c.steps) for c in ablation}) == 12
    ddim, ddpm = ddpm_cells(200)
    assert (ddim.steps, ddim.eta, ddpm.steps, ddpm.eta, ddpm.count) == (50, 0.0, 1000, 1.0, 2000)
    assert RecipeCell("zero_snr", per_digit=7).count == 70
    with pytest.raises(ValueError, match="per_digit"):
        balanced_digits(0)


# --------------------------------------------------------------------------- targets
def sweep_cell(scale: float, rescale: float, accuracy: float, overexposed: float, fid: float) -> dict[str, float]:
    return {
        "guidance_scale": scale,
        "guidance_rescale": rescale,
        "accuracy_mean": accuracy,
        "overexposed_mean": overexposed,
        "per_class_fid_mean": fid,
    }


def test_the_targets_pass_and_fail_on_the_measured_values() -> None:
    cells = [
        sweep_cell(1.5, 0.7, 0.95, 0.0, 10.0),
        sweep_cell(3.0, 0.7, 0.96, 0.0, 12.0),
        sweep_cell(5.0, 0.0, 1.0, 0.02, 30.0),
        sweep_cell(5.0, 0.7, 1.0, 0.011, 25.0),
    ]
    verdicts = {t["target"]: t["passed"] for t in check_targets({"sweep": {"cells": cells}})}
    assert verdicts == {
        "class accuracy >= 97% at s = 3 (phi 0.7)": False,
        "class accuracy >= 90% at s = 1.5 (phi 0.7)": True,
        "accuracy rises with the scale up to s = 3 (phi 0.7)": True,
        "s = 5: rescale 0.7 at least halves the over-exposed fraction": False,
        "s = 5: rescale 0.7 lowers the per-class FID": True,
    }
    ddpm = {"cells": [{"steps": 50, "fid_mean": 3.1, "fid_std": 0.1}, {"steps": 1000, "fid_mean": 2.0, "fid_std": 0.1}]}
    (verdict,) = check_targets({"ddpm": ddpm})
    assert not verdict["passed"] and "ratio 1.55" in verdict["detail"]


# --------------------------------------------------------------------------- the command
def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_eval_recipe_writes_each_part_and_a_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    zero_snr = tiny_conditional(tmp_path, "z.safetensors")
    control = tiny_conditional(tmp_path, "c.safetensors", zero_snr=False)
    out = tmp_path / "out"
    out.mkdir()
    base = ["eval", "--recipe", "--quick", "--per-digit", "2", "--no-progress", "--out-dir", str(out)]
    models = ["--model", str(zero_snr), "--control-model", str(control)]
    code, stdout, _ = cli([*base, *models, "--parts", "sweep", "ablation"], capsys)
    assert code == 0 and "### Guidance sweep" in stdout and "### Recipe ablation" in stdout
    code, stdout, _ = cli(
        [*base, *models, "--inverted-models", str(zero_snr), str(control), "--parts", "brightness"], capsys
    )
    assert code == 0 and "### Brightness" in stdout and "### Guidance sweep" in stdout  # rebuilt from all parts
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "recipe.md",
        "recipe_ablation.json",
        "recipe_brightness.json",
        "recipe_brightness.png",
        "recipe_sweep.json",
        "recipe_tradeoff.png",
    ]
    sweep = json.loads((out / "recipe_sweep.json").read_text())
    assert sweep["seeds"] == [0, 1] and len(sweep["cells"]) == 6
    for cell in sweep["cells"]:
        assert cell["count"] == 20 and len(cell["per_seed"]["accuracy"]) == 2
        assert all(0.0 <= a <= 1.0 for a in cell["per_seed"]["accuracy"])
        assert cell["first_timestep"] == 999 and cell["first_snr"] == 0.0
    ablation = {(c["model"], c["spacing"]): c for c in json.loads((out / "recipe_ablation.json").read_text())["cells"]}
    assert ablation["control", "trailing"]["first_snr"] > 0 and ablation["zero_snr", "leading"]["first_timestep"] == 900
    brightness = json.loads((out / "recipe_brightness.json").read_text())
    assert [c["model"] for c in brightness["cells"]] == ["zero_snr", "control", "inverted", "inverted_control"]
    data = brightness["brightness_data"]
    assert data["zero_snr"]["mean"] < -0.3 and abs(data["inverted"]["mean"]) < 1e-6  # digits and their negatives
    assert all(c["brightness"]["count"] == 40 for c in brightness["cells"])
    assert ((out / "recipe.md").read_text()).count("|") > 50
    code, stdout, _ = cli(["eval", "--recipe", "--report-only", "--out-dir", str(out)], capsys)
    assert code == 0 and "### Brightness" in stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--recipe", "--counts", "10:100"], "--counts is an option of Table 1; --recipe does not take it"),
        (["--recipe", "--clip-sample"], "--clip-sample is an option of Table 1"),
        (["--parts", "sweep"], "--parts needs --recipe"),
        (["--per-digit", "5"], "--per-digit needs --recipe"),
        (["--recipe", "--parts", "ablation"], "--parts ablation needs --control-model"),
        (["--recipe", "--parts", "sweep", "--control-model", "missing.safetensors"], "is not a file"),
        (["--recipe", "--report-only"], "holds no recipe_PART.json"),
    ],
)
def test_eval_recipe_mistakes_are_one_line_and_exit_2(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, stderr = cli(["eval", *argv, "--out-dir", str(tmp_path)], capsys)
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_part_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "recipe_sweep.json").write_text('{"cells": [}')
    with pytest.raises(ValueError, match=r"recipe_sweep\.json is damaged"):
        read_parts(tmp_path)
    code, _, stderr = cli(["eval", "--recipe", "--report-only", "--out-dir", str(tmp_path)], capsys)
    assert code == 2 and "recipe_sweep.json is damaged" in stderr
    (tmp_path / "recipe_sweep.json").write_text('{"cells": []}')
    with pytest.raises(ValueError, match="damaged"):
        read_parts(tmp_path)


# --------------------------------------------------------------------------- the brightness variant
def test_random_inversion_negates_whole_images_with_its_probability() -> None:
    images = load_digits_split().train_images[:400]
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(invert_randomly(images, 0.0, generator), images)
    assert torch.equal(invert_randomly(images, 1.0, generator), -images)
    mixed = invert_randomly(images, 0.5, generator)
    negated = (mixed == -images).flatten(1).all(1)
    assert ((mixed == images).flatten(1).all(1) | negated).all()
    assert 0.4 < float(negated.float().mean()) < 0.6
    with pytest.raises(ValueError, match="random_inversion"):
        ConditionalTrainConfig(random_inversion=1.5)


def test_random_inversion_needs_the_conditional_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, stderr = cli(["train", "--random-inversion", "0.5", "-o", str(tmp_path / "m.safetensors")], capsys)
    assert code == 2 and "--random-inversion needs --conditional" in stderr
    assert list(tmp_path.iterdir()) == []


def test_per_image_statistics_of_the_data_match_numpy() -> None:
    images = load_digits_split().train_images
    flat = images.flatten(1).numpy()
    assert np.allclose(pixel_std(images).numpy(), flat.std(axis=1), atol=1e-6)
    assert np.allclose(mean_brightness(images).numpy(), flat.mean(axis=1), atol=1e-6)


# --------------------------------------------------------------------------- the README's picture
def test_the_guidance_picture_has_one_panel_per_setting_from_the_same_noise() -> None:
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "examples" / "recipe_picture.py"
    spec = importlib.util.spec_from_file_location("recipe_picture", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    image = module.picture(per_digit=1, steps=3, zoom=1)
    panels = len(module.PANELS)
    width = 8 + 2 * 3  # one 8-pixel cell with the grid's padding on both sides
    assert image.shape == (module.LABEL_HEIGHT + 10 * 11 + 3, panels * width + (panels - 1) * 6)
    model, scheduler = module.load_pretrained(conditional=True)
    noise = torch.randn((10, *SAMPLE_SHAPE), generator=torch.Generator().manual_seed(0))
    unguided = module.panel(model, scheduler, noise, 1.0, 0.0, 3)
    strong = module.panel(model, scheduler, noise, 8.0, 0.0, 3)
    assert unguided.shape == (10, 8, 8) and not np.array_equal(unguided, strong)


def test_an_epsilon_model_cannot_take_the_first_step_from_zero_snr_like_diffusers() -> None:
    """Why the recipe needs v-prediction: at abar_999 = 0 the epsilon form of x_0 divides by sqrt(abar) = 0."""
    diffusers = pytest.importorskip("diffusers")
    config = {**scheduler_config(True), "prediction_type": "epsilon"}
    ours, theirs = DDIMScheduler(**config), diffusers.DDIMScheduler(**config)
    for scheduler in (ours, theirs):
        scheduler.set_timesteps(10)
    x, eps = torch.randn(2, *SAMPLE_SHAPE), torch.randn(2, *SAMPLE_SHAPE)
    mine, reference = ours.step(eps, 999, x).pred_original_sample, theirs.step(eps, 999, x).pred_original_sample
    assert not torch.isfinite(mine).any() and not torch.isfinite(reference).any()
    v_config = DDIMScheduler(**scheduler_config(True))
    v_config.set_timesteps(10)
    assert torch.isfinite(v_config.step(eps, 999, x).pred_original_sample).all()  # x_0 = -v at abar = 0
