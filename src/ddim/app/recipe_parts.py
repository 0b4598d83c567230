"""The schema of a recipe part file (``recipe_PART.json``), checked in full before any report is built from it.

A part file is read as hostile input (a regular file, at most :data:`MAX_PART_BYTES`, JSON nesting and integer
digits bounded: :mod:`ddim.file_input`), then every field the report reads is checked: its type (numbers finite,
no nulls but a DDPM cell's ``brightness``), its length (every per-seed list holds one value per seed), and its
consistency (the part is the one its file is named for; each cell's ``METRIC_mean`` and ``METRIC_std`` are those
of its per-seed values; its ``count`` is ``per_digit`` times 10). A file that fails is a :class:`PartFileError`
naming the file and the key, e.g. ``recipe_sweep.json is damaged: cells[2].per_seed.fid holds 1 values, not 5
(one per seed)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ddim.app.digits.conditional import NUM_DIGITS
from ddim.app.evaluation import seed_spread
from ddim.app.recipe_evaluation import BRIGHTNESS_BINS, METRICS, QUANTILES
from ddim.app.seeding import SEED_LIMIT
from ddim.file_input import UnreadableFileError, read_json_file
from ddim.validation import ArgumentValueError, is_int

#: Largest part file read (a part of the full evaluation is a few hundred KB).
MAX_PART_BYTES = 64 << 20
#: Deepest JSON nesting of a part file (it nests 5 levels: part, cells, cell, per_seed, values).
MAX_PART_DEPTH = 8
#: Most seeds and most cells of a part.
MAX_SEEDS = 100_000
MAX_CELLS = 10_000
#: The keys of a part (``ddim.app.cli.eval_recipe.run_part`` writes them all).
TOP_KEYS = (
    "part",
    "seeds",
    "per_digit",
    "cells",
    "per_class_floor",
    "fid_floor",
    "brightness_data",
    "brightness_w1_resampled",
    "seconds_total",
)
#: Relative tolerance of a stored mean or spread against the one recomputed from the per-seed values.
SUMMARY_TOLERANCE = 1e-9


class PartFileError(ArgumentValueError):
    """A recipe part file that cannot be reported on: unreadable, or a field of the wrong type, length or value."""


class _Damage(Exception):
    """A field that fails the schema: its key path and why (turned into a :class:`PartFileError`)."""

    def __init__(self, where: str, why: str) -> None:
        super().__init__(f"{where}{'' if why.startswith('=') else ' '}{why}")


def read_part(path: Path, name: str) -> dict[str, Any]:
    """The part file ``path`` of part ``name``, checked against the schema; :class:`PartFileError` naming the
    file and the key otherwise."""
    try:
        data = read_json_file(path, MAX_PART_BYTES, max_depth=MAX_PART_DEPTH)
    except UnreadableFileError as error:
        raise PartFileError(f"{path} is damaged: {error}") from None
    try:
        return check_part(data, name)
    except _Damage as damage:
        raise PartFileError(f"{path} is damaged: {damage}") from None


def check_part(data: object, name: str) -> dict[str, Any]:
    """``data`` after checking it is a well-formed part ``name``; ``_Damage`` naming the first field that is not."""
    part = _object(data, "the file", TOP_KEYS)
    if part["part"] != name:
        raise _Damage("part", f"is {part['part']!r}, but the file is named for part {name!r}")
    seeds = _list(part["seeds"], "seeds", maximum=MAX_SEEDS)
    for index, seed in enumerate(seeds):
        _int(seed, f"seeds[{index}]", 0, SEED_LIMIT - 1)
    if len(set(seeds)) != len(seeds):
        raise _Damage("seeds", "repeats a seed")
    per_digit = _int(part["per_digit"], "per_digit", 1)
    if _real(part["seconds_total"], "seconds_total") < 0:
        raise _Damage("seconds_total", f"={part['seconds_total']} is negative")
    for key in ("per_class_floor", "fid_floor"):
        for index, row in enumerate(_list(part[key], key, len(seeds))):
            _numbers(row, f"{key}[{index}]")
    for index, cell in enumerate(_list(part["cells"], "cells", maximum=MAX_CELLS)):
        _check_cell(cell, f"cells[{index}]", len(seeds), per_digit, brightness_optional=name == "ddpm")
    _check_brightness_references(part, len(seeds), name == "brightness")
    return part


def _check_cell(cell: object, where: str, seeds: int, per_digit: int, brightness_optional: bool) -> None:
    summaries = tuple(f"{metric}_{kind}" for metric in METRICS for kind in ("mean", "std"))
    fields = ("model", "spacing", "guidance_scale", "guidance_rescale", "steps", "eta", "per_digit", "count")
    values = _object(cell, where, (*fields, "first_timestep", "first_snr", "per_seed", "seconds", *summaries))
    for key in ("model", "spacing"):
        if not isinstance(values[key], str) or not values[key]:
            raise _Damage(f"{where}.{key}", f"={values[key]!r} is not a name")
    for key in ("guidance_scale", "guidance_rescale", "eta", "first_snr", *summaries):
        _real(values[key], f"{where}.{key}")
    _int(values["steps"], f"{where}.steps", 1)
    _int(values["first_timestep"], f"{where}.first_timestep", 0)
    if _int(values["per_digit"], f"{where}.per_digit", 1) != per_digit:
        raise _Damage(f"{where}.per_digit", f"={values['per_digit']} differs from the part's per_digit={per_digit}")
    if _int(values["count"], f"{where}.count", 1) != per_digit * NUM_DIGITS:
        raise _Damage(f"{where}.count", f"={values['count']} is not {NUM_DIGITS} * per_digit={per_digit}")
    for index, second in enumerate(_list(values["seconds"], f"{where}.seconds", seeds)):
        _real(second, f"{where}.seconds[{index}]")
    per_seed = _object(values["per_seed"], f"{where}.per_seed", METRICS)
    for metric in METRICS:
        listed = _list(per_seed[metric], f"{where}.per_seed.{metric}", seeds)
        series = [_real(value, f"{where}.per_seed.{metric}[{index}]") for index, value in enumerate(listed)]
        for kind, recomputed in (("mean", float(np.mean(series))), ("std", seed_spread(series))):
            stored = values[f"{metric}_{kind}"]
            if not math.isclose(stored, recomputed, rel_tol=SUMMARY_TOLERANCE, abs_tol=SUMMARY_TOLERANCE):
                raise _Damage(f"{where}.{metric}_{kind}", f"={stored!r} is not the {kind} of its per-seed values")
    brightness = values.get("brightness")
    if brightness is None and brightness_optional:
        return
    _check_summary(brightness, f"{where}.brightness")
    for key in ("brightness_w1", "brightness_extreme"):
        _real(values.get(key), f"{where}.{key}")


def _check_brightness_references(part: dict[str, Any], seeds: int, required: bool) -> None:
    """``brightness_data`` (model -> summary) and ``brightness_w1_resampled`` (model -> one value per seed); for
    the brightness part, present for every cell's model."""
    for model, summary in _object(part["brightness_data"], "brightness_data", ()).items():
        _check_summary(summary, f"brightness_data.{model}")
    for model, values in _object(part["brightness_w1_resampled"], "brightness_w1_resampled", ()).items():
        for index, value in enumerate(_list(values, f"brightness_w1_resampled.{model}", seeds)):
            _real(value, f"brightness_w1_resampled.{model}[{index}]")
    if required:
        for index, cell in enumerate(part["cells"]):
            for key in ("brightness_data", "brightness_w1_resampled"):
                if cell["model"] not in part[key]:
                    raise _Damage(key, f"has no entry for cells[{index}].model={cell['model']!r}")


def _check_summary(summary: object, where: str) -> None:
    """A brightness summary: count, mean, std, the quantiles and a histogram of ``BRIGHTNESS_BINS`` counts."""
    values = _object(summary, where, ("count", "mean", "std", "quantiles", "histogram"))
    _int(values["count"], f"{where}.count", 0)
    _real(values["mean"], f"{where}.mean")
    _real(values["std"], f"{where}.std")
    _numbers(values["quantiles"], f"{where}.quantiles", tuple(f"{q:g}" for q in QUANTILES))
    for index, count in enumerate(_list(values["histogram"], f"{where}.histogram", BRIGHTNESS_BINS, each="bin")):
        _int(count, f"{where}.histogram[{index}]", 0)


# --------------------------------------------------------------------------- field checks
def _object(value: object, where: str, keys: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise _Damage(where, f"is {_kind(value)}, not a JSON object")
    for key in keys:
        if key not in value:
            raise _Damage(f"{where}.{key}" if where != "the file" else key, "is missing")
    return dict(value)


def _list(
    value: object, where: str, length: int | None = None, maximum: int = MAX_SEEDS, each: str = "seed"
) -> list[Any]:
    """``value`` as a list of ``length`` entries (one per ``each``), else of 1..``maximum``."""
    if not isinstance(value, list):
        raise _Damage(where, f"is {_kind(value)}, not a list")
    if length is not None and len(value) != length:
        raise _Damage(where, f"holds {len(value)} values, not {length} (one per {each})")
    if not 1 <= len(value) <= maximum:
        raise _Damage(where, f"holds {len(value)} values; 1..{maximum} allowed")
    return value


def _int(value: object, where: str, minimum: int, maximum: int | None = None) -> int:
    if not is_int(value):
        raise _Damage(where, f"is {_kind(value)}, not an integer")
    if value < minimum or (maximum is not None and value > maximum):  # type: ignore[operator]
        raise _Damage(where, f"={value} is out of range {minimum}..{'' if maximum is None else maximum}")
    return int(value)  # type: ignore[call-overload]


def _real(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Damage(where, f"is {_kind(value)}, not a number")
    if not math.isfinite(value):
        raise _Damage(where, f"={value} is not finite")
    return float(value)


def _numbers(value: object, where: str, keys: tuple[str, ...] = ()) -> None:
    for key, number in _object(value, where, keys).items():
        _real(number, f"{where}.{key}")


def _kind(value: object) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r}"[:60]
