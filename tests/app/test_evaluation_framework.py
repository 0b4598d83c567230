"""The pieces both evaluations share: seeds, timed seed runs, the seed spread, targets, JSON text."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

from ddim.app.evaluation_framework import (
    TARGETS_HEADER,
    report_json,
    run_seeds,
    seed_list,
    seed_spread,
    target,
    targets_table,
)


def test_seed_list_counts_up_from_the_first_seed() -> None:
    assert seed_list(5, 3) == [5, 6, 7]
    assert seed_list(0, 0) == []


def test_seed_spread_is_the_sample_standard_deviation() -> None:
    values = [1.0, 2.0, 4.0]
    mean = sum(values) / 3
    assert seed_spread(values) == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in values) / 2))
    assert seed_spread([3.0]) == 0.0


def test_run_seeds_scores_every_draw_in_order_and_times_the_draws_alone() -> None:
    calls: list[str] = []

    def draw(seed: int) -> int:
        calls.append(f"draw {seed}")
        return seed * 10

    def score(drawn: int) -> float:
        calls.append(f"score {drawn}")
        time.sleep(0.05)  # scoring is not part of a seed's time
        return drawn / 2

    scores, seconds = run_seeds([1, 2], draw, score, on_seed=lambda: calls.append("seed done"))
    assert scores == [5.0, 10.0]
    assert calls == ["draw 1", "score 10", "seed done", "draw 2", "score 20", "seed done"]
    assert len(seconds) == 2 and all(0 <= s < 0.05 for s in seconds)


def test_targets_read_as_a_markdown_table() -> None:
    checks = [target("a beats b", np.bool_(True), "1 < 2"), target("c", False, "3 > 2")]
    assert checks[0] == {"target": "a beats b", "passed": True, "detail": "1 < 2"}
    assert type(checks[0]["passed"]) is bool  # numpy booleans are not JSON
    assert targets_table(checks) == [*TARGETS_HEADER, "| a beats b | yes | 1 < 2 |", "| c | no | 3 > 2 |"]


def test_report_json_is_indented_by_one_with_numpy_scalars_as_floats(tmp_path: Path) -> None:
    text = report_json({"x": np.float32(0.5), "cells": [1, 2]})
    assert text == '{\n "x": 0.5,\n "cells": [\n  1,\n  2\n ]\n}\n'
    assert json.loads(text) == {"x": 0.5, "cells": [1, 2]}
