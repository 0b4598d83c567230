"""The Table 1 evaluation: the grid, the target checks, and DDPM = eta 1 at S = 1000."""

from __future__ import annotations

import re

import pytest
import torch

from ddim import DDIMScheduler
from ddim.app.digits import SAMPLE_SHAPE
from ddim.app.evaluation import Cell, CellResult, check_targets, markdown_report, run_cell, table1_cells
from ddim.sampling import sample


def test_table1_grid_uses_equal_counts_for_every_comparison() -> None:
    cells = table1_cells({10: 1000, 50: 1000, 1000: 100})
    assert len(cells) == 3 * 4
    for steps, count in ((10, 1000), (50, 1000), (1000, 100)):
        assert {c.count for c in cells if c.steps == steps} == {count}
    assert table1_cells({10: 7, 20: 7}, etas=[0.0]) == [Cell(10, 0.0, 7), Cell(20, 0.0, 7)]


@pytest.mark.parametrize(
    ("ddpm_count", "extra"),
    [
        (500, [Cell(50, 0.0, 500), Cell(1000, 1.0, 500)]),
        (100, [Cell(50, 0.0, 100)]),  # DDPM at N = 100 is the grid's S = 1000, eta = 1 cell
        (1000, [Cell(1000, 1.0, 1000)]),  # S = 50, eta = 0 at N = 1000 is a grid cell
    ],
)
def test_ddpm_comparison_adds_only_the_cells_the_grid_lacks(ddpm_count: int, extra: list[Cell]) -> None:
    grid = table1_cells({10: 1000, 50: 1000, 1000: 100})
    cells = table1_cells({10: 1000, 50: 1000, 1000: 100}, ddpm_count=ddpm_count)
    assert cells[: len(grid)] == grid and cells[len(grid) :] == extra


COUNTS = {10: 250, 20: 250, 50: 250, 1000: 100}


def result(steps: int, eta: float, count: int, fids: list[float]) -> CellResult:
    return CellResult(Cell(steps, eta, count), fids, [0.0] * len(fids))


def test_targets_pass_and_fail_on_constructed_results() -> None:
    good = [
        result(10, 0.0, 250, [5.0, 5.2, 4.8]),
        result(10, 1.0, 250, [9.0, 9.2, 8.8]),
        result(20, 0.0, 250, [4.0, 4.1]),
        result(20, 1.0, 250, [4.5, 4.4]),
        result(50, 0.0, 100, [6.0, 6.2]),
        result(1000, 0.0, 100, [5.0, 5.5]),
        result(1000, 1.0, 100, [5.2, 5.6]),
    ]
    assert [c["passed"] for c in check_targets(good, COUNTS)] == [True, True, True, True]
    bad = [
        result(10, 0.0, 250, [5.0, 6.0, 4.0]),
        result(10, 1.0, 250, [6.0, 6.5, 5.5]),
        result(20, 0.0, 250, [5.0, 5.0]),
        result(20, 1.0, 250, [4.5, 4.5]),
        result(50, 0.0, 100, [13.0, 13.1]),
        result(1000, 0.0, 100, [5.0, 5.1]),
        result(1000, 1.0, 100, [8.0, 8.1]),
    ]
    assert [c["passed"] for c in check_targets(bad, COUNTS)] == [False, False, False, False]


def test_ddpm_comparison_is_checked_at_its_own_count() -> None:
    cells = [
        result(50, 0.0, 250, [20.0, 20.5]),  # the grid's S = 50 (N = 250) must not be used
        result(50, 0.0, 400, [6.0, 6.2]),
        result(1000, 1.0, 400, [5.0, 5.2]),
        result(1000, 0.0, 100, [9.0, 9.1]),
        result(1000, 1.0, 100, [9.2, 9.0]),
    ]
    checks = check_targets(cells, COUNTS, ddpm_count=400)
    assert [c["passed"] for c in checks] == [True, True]
    assert "N=400" in checks[0]["detail"] and "ratio 1.20" in checks[0]["detail"]
    assert "N=100" in checks[1]["detail"]
    assert [c["passed"] for c in check_targets(cells[:1] + cells[2:], COUNTS, ddpm_count=400)] == [True]


class RecordingFID:
    """Stands in for ``DigitsFID``: keeps the samples it is given, returns 0."""

    def __init__(self) -> None:
        self.samples: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor) -> float:
        self.samples.append(x.clone())
        return 0.0


def shrink(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 0.3 * x + 0.001 * t.float().reshape(-1, 1, 1, 1)


def test_run_cell_draws_batches_in_turn_from_one_generator_per_seed() -> None:
    scheduler = DDIMScheduler(clip_sample=False)
    cell = Cell(5, 1.0, 10)
    runs = {}
    for batch_size in (10, 4, 3):
        fid = RecordingFID()
        outcome = run_cell(shrink, scheduler, cell, [0, 1], fid, batch_size=batch_size)  # type: ignore[arg-type]
        assert len(outcome.fids) == len(outcome.seconds) == 2
        assert [x.shape for x in fid.samples] == [(10, 1, 8, 8)] * 2
        runs[batch_size] = fid.samples

    def one_call(count: int, seed: int) -> torch.Tensor:
        shape = (count, *SAMPLE_SHAPE)
        generator = torch.Generator().manual_seed(seed)
        return sample(shrink, scheduler, shape, num_inference_steps=5, eta=1.0, generator=generator, progress=False)

    torch.testing.assert_close(runs[10][1], one_call(10, seed=1), rtol=0, atol=0)
    first_four = one_call(4, seed=0)
    torch.testing.assert_close(runs[4][0][:4], first_four, rtol=0, atol=0)
    assert not torch.equal(runs[4][0][4:8], first_four)  # the second batch continues the stream
    assert not torch.equal(runs[4][0], runs[3][0])  # the noise stream is split differently
    assert not torch.equal(runs[4][0], runs[4][1])  # seeds differ


@pytest.mark.parametrize(
    ("batch_size", "kind", "message"),
    [
        (0, ValueError, "batch_size=0 is out of range; allowed values are >= 1"),
        (-1, ValueError, "batch_size=-1 is out of range; allowed values are >= 1"),
        (2.0, TypeError, "batch_size must be an int, got 2.0 (float)"),
        (True, TypeError, "batch_size must be an int, got True (bool)"),
    ],
)
def test_run_cell_rejects_a_bad_batch_size(batch_size: object, kind: type[Exception], message: str) -> None:
    with pytest.raises(kind, match=re.escape(message)):
        run_cell(shrink, DDIMScheduler(), Cell(2, 0.0, 4), [0], RecordingFID(), batch_size=batch_size)  # type: ignore[arg-type]


def test_markdown_lists_the_cells_outside_the_grid() -> None:
    cells = [
        result(50, 0.0, 20, [10.0, 12.0]),
        result(1000, 1.0, 20, [11.0, 11.0]),
        result(50, 0.0, 40, [7.0, 7.0]),
        result(1000, 1.0, 40, [6.0, 6.0]),
    ]
    report = {
        "seeds": [0, 1],
        "counts": {"50": 20, "1000": 20},
        "cells": [r.as_dict() for r in cells],
        "floor": {},
        "targets": check_targets(cells, {50: 20, 1000: 20}, ddpm_count=40),
    }
    text = markdown_report(report)
    assert "| DDIM S=50, eta=0 | 40 | 7.00 +- 0.00 |" in text
    assert "| DDPM (S=1000, eta=1) | 40 | 6.00 +- 0.00 |" in text
    assert "| DDPM |  | 11.00 +- 0.00 |" in text
    assert "ratio 1.17" in text


@pytest.mark.parametrize("t", [999, 500, 1])
def test_ddpm_step_of_diffusers_is_the_eta_one_step_on_the_full_grid(t: int) -> None:
    diffusers = pytest.importorskip("diffusers")
    ours = DDIMScheduler(clip_sample=False)
    ours.set_timesteps(1000)
    theirs = diffusers.DDPMScheduler(clip_sample=False)  # variance_type="fixed_small": posterior variance
    theirs.set_timesteps(1000)
    generator = torch.Generator().manual_seed(t)
    x, eps = (torch.randn(4, *SAMPLE_SHAPE, generator=generator, dtype=torch.float64) for _ in range(2))
    expected = theirs.step(eps, t, x, generator=torch.Generator().manual_seed(7)).prev_sample
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    got = ours.step(eps, t, x, eta=1.0, variance_noise=noise).prev_sample
    # diffusers forms the posterior coefficients in float32; near t = 0 they differ from ours by ~1e-4.
    torch.testing.assert_close(got, expected, rtol=0, atol=5e-4)
