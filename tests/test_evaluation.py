"""The Table 1 evaluation: the grid, the target checks, and DDPM = eta 1 at S = 1000."""

from __future__ import annotations

import pytest
import torch

from ddim import DDIMScheduler
from ddim.evaluation import Cell, CellResult, check_targets, table1_cells


def test_table1_grid_uses_equal_counts_for_every_comparison() -> None:
    cells = table1_cells({10: 1000, 50: 1000, 1000: 100})
    assert len(cells) == 3 * 4 + 1
    for steps, count in ((10, 1000), (50, 1000), (1000, 100)):
        assert {c.count for c in cells if c.steps == steps and c != Cell(50, 0.0, 100)} == {count}
    assert Cell(50, 0.0, 100) in cells
    assert table1_cells({10: 7, 20: 7}, etas=[0.0]) == [Cell(10, 0.0, 7), Cell(20, 0.0, 7)]


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


@pytest.mark.parametrize("t", [999, 500, 1])
def test_ddpm_step_of_diffusers_is_the_eta_one_step_on_the_full_grid(t: int) -> None:
    diffusers = pytest.importorskip("diffusers")
    ours = DDIMScheduler(clip_sample=False)
    ours.set_timesteps(1000)
    theirs = diffusers.DDPMScheduler(clip_sample=False)  # variance_type="fixed_small": posterior variance
    theirs.set_timesteps(1000)
    generator = torch.Generator().manual_seed(t)
    x, eps = (torch.randn(4, 1, 8, 8, generator=generator, dtype=torch.float64) for _ in range(2))
    expected = theirs.step(eps, t, x, generator=torch.Generator().manual_seed(7)).prev_sample
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    got = ours.step(eps, t, x, eta=1.0, variance_noise=noise).prev_sample
    # diffusers forms the posterior coefficients in float32; near t = 0 they differ from ours by ~1e-4.
    torch.testing.assert_close(got, expected, rtol=0, atol=5e-4)
