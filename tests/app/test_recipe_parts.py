"""Recipe part files edited by an attacker: every damage is refused (file and key named) before a report is written,
and whatever the schema lets through, the report builds from."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddim.app.cli import main
from ddim.app.recipe_evaluation import METRICS, RecipeCell, RecipeResult, brightness_summary
from ddim.app.recipe_parts import PartFileError, read_part
from ddim.app.recipe_report import PART_FILE, PART_NAMES, markdown_report, paired

SEEDS = [0, 1, 2, 3, 4]


def valid_part(name: str, seeds: list[int] = SEEDS) -> dict[str, Any]:
    """A part as ``ddim eval --recipe`` writes it (the producer's own dataclasses), with made-up measurements."""
    rng = np.random.default_rng(len(name))
    models = ["zero_snr", "control"]
    cells = []
    for index, (model, scale) in enumerate([(m, s) for m in models for s in (1.0, 3.0)]):
        cell = RecipeCell(model, guidance_scale=scale, steps=1000 if name == "ddpm" and index == 0 else 50, per_digit=3)
        result = RecipeResult(cell, first_timestep=999, first_snr=0.0)
        result.values = {metric: rng.uniform(0, 1, len(seeds)).tolist() for metric in METRICS}
        result.seconds = rng.uniform(1, 2, len(seeds)).tolist()
        if name != "ddpm":
            result.brightness = rng.uniform(-1, 1, 30).tolist()
        entry = result.as_dict()
        if name != "ddpm":
            entry["brightness_w1"], entry["brightness_extreme"] = 0.01, 0.1
        cells.append(entry)
    return json.loads(
        json.dumps(
            {
                "part": name,
                "seeds": seeds,
                "per_digit": 3,
                "cells": cells,
                "per_class_floor": [{"resampled": 1.0, "noise": 9.0} for _ in seeds],
                "fid_floor": [{"resampled": 1.0, "held_out": 1.5, "noise": 9.0} for _ in seeds],
                "brightness_data": {m: brightness_summary(torch.linspace(-1, 0, 40)) for m in models},
                "brightness_w1_resampled": {m: [0.01] * len(seeds) for m in models},
                "seconds_total": 12.0,
            }
        )
    )


def write_part(folder: Path, name: str, part: Any, text: str | None = None) -> Path:
    path = folder / PART_FILE.format(name)
    path.write_text(text if text is not None else json.dumps(part))
    return path


@pytest.mark.parametrize("name", PART_NAMES)
def test_a_part_as_the_evaluation_writes_it_is_accepted_and_reported(name: str, tmp_path: Path) -> None:
    part = valid_part(name)
    assert read_part(write_part(tmp_path, name, part), name) == part
    assert "## The zero-terminal-SNR recipe" in markdown_report({name: part}, 0.5)


def cut_per_seed(part: dict[str, Any]) -> None:
    part["cells"][1]["per_seed"]["fid"] = part["cells"][1]["per_seed"]["fid"][:1]


def set_path(path: tuple[Any, ...], value: Any) -> Any:
    def edit(part: dict[str, Any]) -> None:
        target: Any = part
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return edit


def drop(path: tuple[Any, ...]) -> Any:
    def edit(part: dict[str, Any]) -> None:
        target: Any = part
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return edit


@pytest.mark.parametrize(
    ("name", "edit", "message"),
    [
        ("sweep", cut_per_seed, "cells[1].per_seed.fid holds 1 values, not 5 (one per seed)"),
        ("sweep", set_path(("part",), "ablation"), "part is 'ablation', but the file is named for part 'sweep'"),
        ("sweep", set_path(("seeds",), "abc"), "seeds is str 'abc', not a list"),
        ("sweep", set_path(("seeds",), [0, 1, 2, 3, "4"]), "seeds[4] is str '4', not an integer"),
        ("sweep", set_path(("seeds",), [0, 1, 2, 3, True]), "seeds[4] is bool True, not an integer"),
        ("sweep", set_path(("seeds",), [0, 1, 2, 3, 3]), "seeds repeats a seed"),
        ("sweep", set_path(("seeds",), [0, 1, 2, 3, -4]), "seeds[4]=-4 is out of range"),
        ("sweep", set_path(("cells",), []), "cells holds 0 values"),
        ("sweep", drop(("cells",)), "cells is missing"),
        ("sweep", set_path(("cells", 0, "per_seed", "accuracy", 2), None), "cells[0].per_seed.accuracy[2] is null"),
        ("sweep", set_path(("cells", 0, "fid_mean"), "3"), "cells[0].fid_mean is str '3', not a number"),
        ("sweep", set_path(("cells", 0, "fid_mean"), 0.123), "cells[0].fid_mean=0.123 is not the mean of its per-"),
        ("sweep", set_path(("cells", 2, "count"), 31), "cells[2].count=31 is not 10 * per_digit=3"),
        ("sweep", drop(("cells", 3, "brightness")), "cells[3].brightness is null, not a JSON object"),
        ("sweep", set_path(("cells", 0, "seconds"), [1.0]), "cells[0].seconds holds 1 values, not 5"),
        ("sweep", set_path(("per_class_floor",), [{"resampled": 1.0}]), "per_class_floor holds 1 values, not 5"),
        ("sweep", drop(("cells", 0, "per_seed", "pixel_std")), "cells[0].per_seed.pixel_std is missing"),
        ("ablation", set_path(("cells", 0, "steps"), 0), "cells[0].steps=0 is out of range 1.."),
        ("ablation", set_path(("cells", 0, "model"), ""), "cells[0].model='' is not a name"),
        ("brightness", drop(("brightness_data", "control")), "brightness_data has no entry for cells[2].model="),
        ("brightness", set_path(("brightness_data", "control", "histogram"), [1] * 3), "histogram holds 3 values"),
        ("brightness", set_path(("brightness_data", "control", "quantiles", "0.5"), []), "quantiles.0.5 is list"),
        ("ddpm", set_path(("seconds_total",), -1.0), "seconds_total=-1.0 is negative"),
    ],
)
def test_a_damaged_part_is_refused_naming_the_file_and_the_key(
    name: str, edit: Any, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    part = valid_part(name)
    edit(part)
    path = write_part(tmp_path, name, part)
    with pytest.raises(PartFileError) as refused:
        read_part(path, name)
    assert str(refused.value).startswith(f"{path} is damaged: ") and message in str(refused.value), str(refused.value)
    assert main(["eval", "--recipe", "--report-only", "--out-dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error and str(path) in error
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no report written


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"part": ' + "[" * 100 + "]" * 100 + "}", "nests JSON 101 levels deep; at most 8 allowed"),
        ('{"per_digit": 1' + "0" * 200 + "}", "holds an integer of 201 digits"),
        ('{"seeds": [NaN]}', "part is missing"),
        ("[1, 2]", "the file is list [1, 2], not a JSON object"),
        ("{not json", "is not valid JSON"),
    ],
)
def test_unparsable_deep_and_huge_part_files_are_refused(text: str, message: str, tmp_path: Path) -> None:
    path = write_part(tmp_path, "sweep", None, text)
    with pytest.raises(PartFileError, match=r"recipe_sweep\.json is damaged: ") as refused:
        read_part(path, "sweep")
    assert message in str(refused.value)


def test_a_non_finite_measurement_is_refused(tmp_path: Path) -> None:
    part = valid_part("sweep")
    text = json.dumps(part).replace(json.dumps(part["cells"][0]["fid_std"]), "NaN", 1)
    with pytest.raises(PartFileError, match=r"cells\[0\]\.fid_std=nan is not finite"):
        read_part(write_part(tmp_path, "sweep", None, text), "sweep")


def test_the_paired_difference_uses_every_seed_of_an_accepted_part() -> None:
    """The report's seed-by-seed difference, against the formula written out over the five seeds."""
    part = valid_part("ablation")
    a, b = part["cells"][0], part["cells"][1]
    difference = [x - y for x, y in zip(a["per_seed"]["fid"], b["per_seed"]["fid"], strict=True)]
    mean = sum(difference) / 5
    spread = (sum((d - mean) ** 2 for d in difference) / 4) ** 0.5
    assert paired(a, b, "fid") == f"{mean:+.2f} +- {spread:.2f}"


HOSTILE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=4),
    st.lists(st.floats(-2, 2), max_size=6),
    st.dictionaries(st.sampled_from(["mean", "std", "0.5", "x"]), st.floats(-1, 1), max_size=3),
)


def paths_of(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path inside a JSON value."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths_of(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += paths_of(item, (*prefix, index))
    return found


PARTS = {name: valid_part(name) for name in PART_NAMES}
PATHS = [(name, path) for name in PART_NAMES for path in paths_of(PARTS[name])]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(PATHS), value=HOSTILE, remove=st.booleans())
def test_any_single_edit_is_refused_or_the_report_builds_from_it(
    tmp_path_factory: pytest.TempPathFactory, where: tuple[str, tuple[Any, ...]], value: Any, remove: bool
) -> None:
    name, path = where
    part = copy.deepcopy(PARTS[name])
    (drop(path) if remove else set_path(path, value))(part)
    file = write_part(tmp_path_factory.mktemp("part"), name, part)
    try:
        checked = read_part(file, name)
    except PartFileError as error:
        assert str(error).startswith(f"{file} is damaged: ")
        return
    markdown_report({name: checked}, 0.5)  # no KeyError, TypeError or IndexError from anything let through
