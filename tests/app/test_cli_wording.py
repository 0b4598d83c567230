"""What ``ddim`` tells its user: messages that name flags and full values, counts in the right number, help texts
that state every default, outputs that are never replaced unasked, one progress bar per run."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from test_shards import CLI_SAMPLE, file_digests, make_model, run

from ddim.app import evaluation
from ddim.app.cli import build_parser, main
from ddim.app.shards import read_manifest, shard_file
from ddim.app.shards.manifest import config_differences
from ddim.app.wording import counted

ROOT = Path(__file__).resolve().parents[2]


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(code: int, err: str) -> str:
    assert code == 2
    assert err.count("\n") == 1, err
    return err.strip()


# --------------------------------------------------------------------------- resuming with other settings
def test_a_resume_with_other_settings_names_each_differing_key_with_its_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "shards"
    assert main([*CLI_SAMPLE, "--out-dir", str(out)]) == 0
    before = file_digests(out)
    capsys.readouterr()
    code, _, err = cli([*CLI_SAMPLE, "--out-dir", str(out), "--steps", "3", "--seed", "5"], capsys)
    message = one_line_error(code, err)
    assert "num_inference_steps: manifest has 2, this run has 3" in message
    assert "seed: manifest has 0, this run has 5" in message
    recorded = read_manifest(out)["config"]["timesteps"]
    assert f"timesteps: manifest has {recorded}" in message  # a short list in full
    assert file_digests(out) == before


def test_a_resume_with_other_weights_shows_both_checksums_in_full(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(out, num_samples=4)
    recorded = read_manifest(out)["config"]["model"]["state_sha256"]
    model = make_model()
    model.conv_in.bias.data += 1.0
    with pytest.raises(ValueError, match="another configuration") as refused:
        run(out, num_samples=4, model=model)
    message = str(refused.value)
    assert f'model: manifest has {{"state_sha256": "{recorded}"}}, this run has {{"state_sha256": "' in message
    assert re.search(r'this run has \{"state_sha256": "[0-9a-f]{64}"\}', message)


def test_differences_show_only_the_differing_fields_and_long_lists_by_their_ends() -> None:
    recorded = {
        "eta": 0.0,
        "scheduler": {"class": "DDIMScheduler", "config": {"beta_end": 0.012, "timestep_spacing": "leading"}},
        "timesteps": list(range(980, -1, -20)),
        "png": False,
    }
    current = {
        "eta": 0.0,
        "scheduler": {"class": "DDIMScheduler", "config": {"beta_end": 0.012, "timestep_spacing": "trailing"}},
        "timesteps": list(range(999, 0, -50)),
        "png": False,
    }
    assert config_differences(recorded, current) == [
        'scheduler: manifest has {"config": {"timestep_spacing": "leading"}}, '
        'this run has {"config": {"timestep_spacing": "trailing"}}',
        "timesteps: manifest has 50 values [980, 960, ..., 0], this run has 20 values [999, 949, ..., 49]",
    ]


def test_long_lists_with_the_same_ends_are_shown_in_full() -> None:
    recorded, current = list(range(10)), [*range(5), 50, *range(6, 10)]
    expected = f"t: manifest has {recorded}, this run has {current}"
    assert config_differences({"t": recorded}, {"t": current}) == [expected]


# --------------------------------------------------------------------------- flags, not parameters
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--batch-size", "6"], "--batch-size 6 must be a multiple of --micro-batch 4 "),
        (["--batch-size", "6", "--shard-size", "10"], "--batch-size 6 and --shard-size 10 must be multiples of "),
    ],
)
def test_the_batch_size_error_names_the_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    out = tmp_path / "shards"
    code, _, err = cli([*CLI_SAMPLE, "--out-dir", str(out), *extra], capsys)
    text = one_line_error(code, err)
    assert message in text and "batch_size=" not in text and "shard_size=" not in text
    assert not out.exists()


# --------------------------------------------------------------------------- ddim verify
def test_verify_counts_the_samples_of_the_complete_shards(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "shards"
    assert main([*CLI_SAMPLE, "--out-dir", str(out)]) == 0
    capsys.readouterr()
    code, stdout, _ = cli(["verify", str(out)], capsys)
    assert code == 0 and f"{out}: 2/2 shards complete (8 of 8 samples)" in stdout
    (out / shard_file(1)).unlink()
    code, stdout, _ = cli(["verify", str(out)], capsys)
    assert code == 1 and f"{out}: 1/2 shards complete (4 of 8 samples)" in stdout


def test_verify_of_a_missing_folder_says_it_does_not_exist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere"
    code, _, err = cli(["verify", str(missing)], capsys)
    assert one_line_error(code, err) == f"ddim verify: error: {str(missing)!r} does not exist"
    afile = tmp_path / "file"
    afile.write_text("x")
    code, _, err = cli(["verify", str(afile)], capsys)
    assert one_line_error(code, err) == f"ddim verify: error: {str(afile)!r} is not a directory"


# --------------------------------------------------------------------------- PNG outputs
PNG_COMMANDS = {
    "sample": ["sample", "-n", "1", "--steps", "1", "--no-progress"],
    "interpolate": ["interpolate", "--frames", "2", "--steps", "1", "--no-progress"],
    "invert": ["invert", "-n", "1", "--steps", "1", "--no-progress"],
}


@pytest.mark.parametrize("command", sorted(PNG_COMMANDS))
def test_an_output_that_is_not_png_is_refused(command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.jpg"
    code, _, err = cli([*PNG_COMMANDS[command], "-o", str(out)], capsys)
    assert f"--output {str(out)!r} must end in .png: ddim writes PNG images only" in one_line_error(code, err)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", sorted(PNG_COMMANDS))
def test_an_existing_output_is_replaced_only_with_force(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.png"
    out.write_bytes(b"keep me")
    code, _, err = cli([*PNG_COMMANDS[command], "-o", str(out)], capsys)
    assert f"--output {str(out)!r} exists; pass --force to replace it" in one_line_error(code, err)
    assert out.read_bytes() == b"keep me"
    code, stdout, _ = cli([*PNG_COMMANDS[command], "-o", str(out), "--force"], capsys)
    assert code == 0 and f"wrote {out}" in stdout
    assert out.read_bytes().startswith(b"\x89PNG")


def test_the_help_of_every_png_command_documents_the_png_suffix_and_force() -> None:
    for command in PNG_COMMANDS:
        text = " ".join(subparser(command).format_help().split())
        assert "must end in .png" in text and "refused unless --force" in text, command


# --------------------------------------------------------------------------- one progress bar
def test_a_grid_of_several_batches_shows_one_bar_for_the_whole_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("tqdm")
    out = tmp_path / "grid.png"
    code, _, err = cli(["sample", "-n", "5", "--batch-size", "2", "--steps", "3", "-o", str(out)], capsys)
    assert code == 0
    assert "9/9" in err  # 3 batches x 3 steps on one bar
    assert "3/3" not in err  # no bar per batch


# --------------------------------------------------------------------------- help texts
def subparser(name: str) -> argparse.ArgumentParser:
    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return actions[0].choices[name]


@pytest.mark.parametrize("command", ["sample", "invert", "interpolate", "eval", "train", "merge", "verify"])
def test_every_option_has_help(command: str) -> None:
    bare = [
        action.option_strings[0]
        for action in subparser(command)._actions
        if action.option_strings and not (action.help or "").strip()
    ]
    assert bare == []


@pytest.mark.parametrize(
    ("command", "flag", "default"),
    [
        ("sample", "--eta", "(default: 0)"),
        ("interpolate", "--spacing", "(default: the model's scheduler config)"),
        ("train", "--batch-size", "(default: 128)"),
        ("train", "--learning-rate", "(default: 0.002)"),
        ("train", "--warmup-steps", "(default: 200)"),
        ("train", "--seed", "(default: 0)"),
    ],
)
def test_help_states_the_default(command: str, flag: str, default: str) -> None:
    (action,) = [a for a in subparser(command)._actions if flag in a.option_strings]
    assert action.help is not None and action.help.endswith(default)


# --------------------------------------------------------------------------- counts
@pytest.mark.parametrize(("count", "text"), [(0, "0 samples"), (1, "1 sample"), (2, "2 samples")])
def test_counted_puts_the_noun_in_the_right_number(count: int, text: str) -> None:
    assert counted(count, "sample") == text
    assert counted(count, "process", "processes") == text.replace("sample", "process").replace("processs", "processes")


def test_one_sample_of_one_step_reads_in_the_singular(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "one.png"
    code, stdout, _ = cli(["sample", "-n", "1", "--steps", "1", "--no-progress", "-o", str(out)], capsys)
    assert code == 0 and "(1 sample of the embedded digits model, 1 step," in stdout


# --------------------------------------------------------------------------- ddim eval --quick
def quick_help() -> str:
    (action,) = [a for a in subparser("eval")._actions if "--quick" in a.option_strings]
    assert action.help is not None
    return action.help


def test_the_quick_evaluation_states_one_duration_in_its_help_and_the_readme() -> None:
    stated = re.search(r"about (\d+) s", quick_help())
    assert stated is not None
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    evaluation_page = (ROOT / "docs" / "evaluation.md").read_text(encoding="utf-8")
    for text in (readme, evaluation_page):
        durations = re.findall(r"--quick` runs a reduced grid in about (\d+) s", text)
        assert durations == [stated.group(1)]


def test_a_quick_report_says_it_cannot_judge_the_targets() -> None:
    cells = [evaluation.CellResult(evaluation.Cell(10, eta, 300), [5.0, 6.0], [1.0, 1.0]) for eta in (0.0, 1.0)]
    report = {
        "seeds": [0, 1],
        "counts": {"10": 300},
        "cells": [c.as_dict() for c in cells],
        "floor": {},
        "targets": evaluation.check_targets(cells, {10: 300}),
    }
    assert evaluation.QUICK_NOTE not in evaluation.markdown_report(report)
    text = evaluation.markdown_report({**report, "quick": True})
    assert evaluation.QUICK_NOTE in text
    assert text.index(evaluation.QUICK_NOTE) < text.index("| target | met | measured |")
    assert "cannot judge these targets" in evaluation.QUICK_NOTE


@pytest.mark.slow
def test_ddim_eval_quick_prints_the_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["eval", "--quick", "--counts", "10:4", "--batch-size", "4", "--no-progress", "--out-dir", str(tmp_path)]
    code, stdout, _ = cli(argv, capsys)
    assert code == 0 and evaluation.QUICK_NOTE in stdout
    assert evaluation.QUICK_NOTE in (tmp_path / "table1.md").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- where the clip_sample trap is
def test_the_clip_sample_pointers_name_the_page_that_explains_the_trap() -> None:
    (action,) = [a for a in subparser("eval")._actions if "--clip-sample" in a.option_strings]
    assert action.help is not None and "docs/evaluation.md, 'The clip_sample trap'" in action.help
    assert "\n## The clip_sample trap\n" in (ROOT / "docs" / "evaluation.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("recipe", [[], ["--recipe"]])
def test_both_evaluations_refuse_seeds_past_the_limit(
    recipe: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["eval", *recipe, "--first-seed", "4294967295", "--seeds", "2", "--out-dir", str(tmp_path)]
    code, _, err = cli(argv, capsys)
    assert "--first-seed 4294967295 + --seeds 2 must be at most 2**32" in one_line_error(code, err)
    assert list(tmp_path.iterdir()) == []
