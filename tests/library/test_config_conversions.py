"""Conversions between our classes and diffusers' DDIM classes with ``from_config``: silent at defaults in
both directions (diffusers warns through its logger, we through ``warnings``), a warning where diffusers'
class really lacks a set option, and the version a saved config records."""

from __future__ import annotations

import importlib.metadata
import itertools
import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import diffusers
import pytest

import ddim
import ddim.diffusers
from conftest import diffusers_log_messages
from ddim.config import DIFFUSERS_COMPAT_VERSION

OURS = [
    ddim.DDIMScheduler,
    ddim.DDIMInverseScheduler,
    ddim.DDIMParallelScheduler,
    ddim.diffusers.DDIMScheduler,
    ddim.diffusers.DDIMInverseScheduler,
    ddim.diffusers.DDIMParallelScheduler,
]
THEIRS = [diffusers.DDIMScheduler, diffusers.DDIMInverseScheduler, diffusers.DDIMParallelScheduler]
PAIRS = [(a, b) for a, b in itertools.product(OURS + THEIRS, repeat=2) if not (a in THEIRS and b in THEIRS)]


def label(cls: type) -> str:
    return f"{cls.__module__.split('.')[0]}.{'diffusers.' if cls.__module__ == 'ddim.diffusers' else ''}{cls.__name__}"


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """Every message diffusers logs (any of its loggers, WARNING and above) while the test runs."""
    with diffusers_log_messages("diffusers") as records:
        yield records


@pytest.mark.parametrize(("source", "target"), PAIRS, ids=[f"{label(a)}->{label(b)}" for a, b in PAIRS])
def test_from_config_at_defaults_is_silent_both_ways(source: type, target: type, logged: list[str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = source().config
        converted = target.from_config(config)
        back = source.from_config(converted.config)
    assert logged == []
    assert "prev_timestep_from_grid" not in config and "prev_timestep_from_grid" not in back.config


@pytest.mark.parametrize("cls", [ddim.DDIMScheduler, ddim.diffusers.DDIMScheduler, ddim.DDIMParallelScheduler])
def test_an_option_at_its_default_is_read_but_not_held(cls: type) -> None:
    scheduler = cls()
    assert scheduler.config.prev_timestep_from_grid is False  # attribute access reads the default
    assert "prev_timestep_from_grid" not in scheduler.config and "prev_timestep_from_grid" not in dict(scheduler.config)
    assert "prev_timestep_from_grid" not in scheduler.config.get("_use_default_values", [])
    assert cls(prev_timestep_from_grid=True).config["prev_timestep_from_grid"] is True
    reset = cls.from_config(cls(prev_timestep_from_grid=True).config, prev_timestep_from_grid=False)
    assert "prev_timestep_from_grid" not in reset.config and reset.config.prev_timestep_from_grid is False


@pytest.mark.parametrize("cls", [ddim.DDIMScheduler, ddim.diffusers.DDIMScheduler, ddim.DDIMParallelScheduler])
def test_a_set_option_still_warns_in_diffusers_class(cls: type, logged: list[str]) -> None:
    diffusers.DDIMScheduler.from_config(cls(prev_timestep_from_grid=True).config)
    assert len(logged) == 1 and "prev_timestep_from_grid" in logged[0]


@pytest.mark.parametrize("kwargs", [{}, {"clip_sample": False}, {"beta_schedule": "scaled_linear", "steps_offset": 1}])
@pytest.mark.parametrize("cls", [ddim.DDIMScheduler, ddim.diffusers.DDIMScheduler])
def test_defaults_list_is_diffusers_own_in_its_order(cls: type, kwargs: dict[str, object]) -> None:
    # diffusers' round-trip test compares whole configs, lists included, so the order must be diffusers'
    assert cls(**kwargs).config.get("_use_default_values") == diffusers.DDIMScheduler(**kwargs).config.get(
        "_use_default_values"
    )


def test_round_trip_through_every_compatible_keeps_the_config() -> None:
    # diffusers' own round-trip check: our config back from any compatible class, keys of ours unchanged
    for cls in (ddim.diffusers.DDIMScheduler, ddim.diffusers.DDIMParallelScheduler):
        scheduler = cls(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, clip_sample=True)
        for compatible in scheduler.compatibles:
            try:
                other = compatible.from_config(scheduler.config)
            except ImportError:  # a compatible class whose optional dependency is absent (torchsde)
                continue
            again = cls.from_config(other.config)
            assert {k: v for k, v in again.config.items() if k in scheduler.config} == dict(scheduler.config)


def test_saved_version_is_the_installed_diffusers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ddim.DDIMScheduler().save_config(tmp_path / "installed")
    written = json.loads((tmp_path / "installed" / "scheduler_config.json").read_text())
    assert written["_diffusers_version"] == importlib.metadata.version("diffusers") == diffusers.__version__

    def absent(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", absent)
    ddim.DDIMScheduler().save_config(tmp_path / "absent")
    written = json.loads((tmp_path / "absent" / "scheduler_config.json").read_text())
    assert written["_diffusers_version"] == DIFFUSERS_COMPAT_VERSION
