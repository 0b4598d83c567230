"""``examples/policy_loop.py`` runs on the CPU: the drop-in loop gives diffusers' actions."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "policy_loop.py"


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location("policy_loop", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_policy_example_runs_and_matches_diffusers(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("diffusers")
    module = load_example()
    results = module.main("cpu")
    assert results["ddim"].shape == (1, module.HORIZON, module.ACTION_DIM)
    assert torch.isfinite(results["ddim"]).all() and results["ddim"].abs().max() <= 1.0 + 1e-6  # clip_sample
    torch.testing.assert_close(results["ddim"], results["diffusers"], rtol=1e-5, atol=1e-5)
    out = capsys.readouterr().out
    assert "graphed loop: needs CUDA, skipped" in out and "drop-in" in out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_policy_example_graphed_loop_on_cuda() -> None:
    results = load_example().main("cuda")
    torch.testing.assert_close(results["graphed"], results["ddim"], rtol=1e-4, atol=1e-4)
