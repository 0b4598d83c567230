"""Bad input: every documented argument mistake raises ValueError/TypeError naming the parameter and the value.

Includes the two inputs diffusers 0.42.1 mishandles (``steps_offset=1`` with N = T: IndexError inside
``step``; ``trailing`` with T=1000, N=61: a 62nd timestep of -1), where ours raises or stays valid.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import diffusers
import pytest
import torch

from ddim import DDIMScheduler


def raises(kind: type[Exception], *fragments: str) -> Any:
    """pytest.raises whose message must contain every fragment (matched literally)."""
    return pytest.raises(kind, match="(?s)" + "".join(f"(?=.*{re.escape(f)})" for f in fragments))


def ready(**config: Any) -> DDIMScheduler:
    scheduler = DDIMScheduler(**config)
    scheduler.set_timesteps(10)
    return scheduler


X = torch.zeros(2, 3, 4)


# ----------------------------------------------------------------------------- constructor
@pytest.mark.parametrize(
    ("name", "value", "allowed"),
    [
        ("beta_schedule", "cosine", "squaredcos_cap_v2"),
        ("prediction_type", "eps", "v_prediction"),
        ("timestep_spacing", "uniform", "trailing"),
    ],
)
def test_unknown_choice(name: str, value: str, allowed: str) -> None:
    with raises(ValueError, name, repr(value), allowed):
        DDIMScheduler(**{name: value})


def test_unknown_prediction_type_set_on_config_fails_at_step() -> None:
    scheduler = ready()
    scheduler.config.prediction_type = "noise"
    with raises(ValueError, "prediction_type", "'noise'", "epsilon"):
        scheduler.step(X, 900, X)


@pytest.mark.parametrize(
    ("betas", "fragments"),
    [
        ([0.1] * 9, ("trained_betas", "num_train_timesteps=10", "(9,)")),
        ([[0.1] * 10], ("trained_betas", "num_train_timesteps=10", "(1, 10)")),
        ([0.1] * 9 + [0.0], ("trained_betas", "(0, 1]", "trained_betas[9]=0.0")),
        ([-0.1] + [0.1] * 9, ("trained_betas", "(0, 1]", "trained_betas[0]=-0.1")),
        ([0.1] * 4 + [1.5] + [0.1] * 5, ("trained_betas", "(0, 1]", "trained_betas[4]=1.5")),
    ],
)
def test_bad_trained_betas(betas: list[Any], fragments: tuple[str, ...]) -> None:
    with raises(ValueError, *fragments):
        DDIMScheduler(num_train_timesteps=10, trained_betas=betas)


@pytest.mark.parametrize(
    ("config", "kind", "fragments"),
    [
        ({"num_train_timesteps": 0}, ValueError, ("num_train_timesteps=0",)),
        ({"num_train_timesteps": 10.0}, TypeError, ("num_train_timesteps", "10.0")),
        ({"clip_sample": "yes"}, TypeError, ("clip_sample", "'yes'")),
        ({"steps_offset": 1.5}, TypeError, ("steps_offset", "1.5")),
        ({"beta_start": "0.1"}, TypeError, ("beta_start", "'0.1'")),
        ({"prediction_type": 3}, TypeError, ("prediction_type", "3")),
    ],
)
def test_wrongly_typed_arguments(config: dict[str, Any], kind: type[Exception], fragments: tuple[str, ...]) -> None:
    with raises(kind, *fragments):
        DDIMScheduler(**config)


# ----------------------------------------------------------------------------- set_timesteps
@pytest.mark.parametrize(
    ("value", "kind", "fragments"),
    [
        (0, ValueError, ("num_inference_steps=0", "1..num_train_timesteps=1000")),
        (-3, ValueError, ("num_inference_steps=-3", "1..num_train_timesteps=1000")),
        (1001, ValueError, ("num_inference_steps=1001", "1..num_train_timesteps=1000")),
        (2.5, TypeError, ("num_inference_steps", "2.5", "int")),
        ("10", TypeError, ("num_inference_steps", "'10'", "int")),
        (True, TypeError, ("num_inference_steps", "True")),
    ],
)
def test_bad_num_inference_steps(value: Any, kind: type[Exception], fragments: tuple[str, ...]) -> None:
    with raises(kind, *fragments):
        DDIMScheduler().set_timesteps(value)


def test_steps_offset_with_n_equal_t_raises_where_diffusers_crashes() -> None:
    theirs = diffusers.DDIMScheduler(num_train_timesteps=10, steps_offset=1)
    theirs.set_timesteps(10)
    assert int(theirs.timesteps.max()) == 10  # outside the table: diffusers' step then raises IndexError
    with pytest.raises(IndexError):
        theirs.step(X, int(theirs.timesteps[0]), X)
    with raises(ValueError, "steps_offset=1", "num_inference_steps=10", "num_train_timesteps=10"):
        DDIMScheduler(num_train_timesteps=10, steps_offset=1).set_timesteps(10)


def test_trailing_grid_has_exactly_n_valid_timesteps_where_diffusers_adds_minus_one() -> None:
    theirs = diffusers.DDIMScheduler(timestep_spacing="trailing")
    theirs.set_timesteps(61)
    assert len(theirs.timesteps) == 62 and int(theirs.timesteps[-1]) == -1
    ours = DDIMScheduler(timestep_spacing="trailing")
    ours.set_timesteps(61)
    assert len(ours.timesteps) == 61
    assert ours.timesteps.tolist() == theirs.timesteps.tolist()[:61]
    assert int(ours.timesteps.min()) >= 0


# ----------------------------------------------------------------------------- step
def test_step_before_set_timesteps() -> None:
    with raises(ValueError, "set_timesteps"):
        DDIMScheduler().step(X, 10, X)


@pytest.mark.parametrize("eta", [-0.1, float("-inf"), float("nan"), float("inf")])
def test_negative_or_non_finite_eta(eta: float) -> None:
    with raises(ValueError, f"eta={eta!r}", "allowed values are >= 0"):
        ready().step(X, 900, X, eta=eta)


@pytest.mark.parametrize("eta", ["0.5", None, True])
def test_non_numeric_eta(eta: Any) -> None:
    with raises(TypeError, "eta", repr(eta)):
        ready().step(X, 900, X, eta=eta)


@pytest.mark.parametrize("timestep", [-1, 1000, 5000])
def test_timestep_out_of_range(timestep: int) -> None:
    scheduler = ready()
    with raises(ValueError, f"timestep={timestep}", "0..999"):
        scheduler.step(X, timestep, X)
    with raises(ValueError, f"timestep={timestep}", "0..999"):
        scheduler.step(X, torch.tensor(timestep), X)
    with raises(ValueError, f"timestep contains {timestep}", "0..999"):
        scheduler.step(X, torch.tensor([900, timestep]), X)


@pytest.mark.parametrize(
    ("timestep", "kind", "fragment"),
    [
        (900.0, TypeError, "900.0"),
        ("900", TypeError, "'900'"),
        (torch.tensor(900.0), TypeError, "float32"),
        (torch.tensor([[900, 800]]), ValueError, "(1, 2)"),
        (torch.tensor([900, 800, 700]), ValueError, "3 entries"),
    ],
)
def test_bad_timestep_types(timestep: Any, kind: type[Exception], fragment: str) -> None:
    with raises(kind, "timestep", fragment):
        ready().step(X, timestep, X)


def test_shape_mismatch() -> None:
    with raises(ValueError, "model_output", "(2, 3, 5)", "(2, 3, 4)"):
        ready().step(torch.zeros(2, 3, 5), 900, X)


def test_non_tensor_inputs() -> None:
    with raises(TypeError, "model_output", "list"):
        ready().step([0.0], 900, X)  # type: ignore[arg-type]


def test_generator_and_variance_noise_together() -> None:
    with raises(ValueError, "generator", "variance_noise"):
        ready().step(X, 900, X, eta=0.5, generator=torch.Generator(), variance_noise=torch.zeros_like(X))


def test_variance_noise_of_wrong_shape() -> None:
    with raises(ValueError, "variance_noise", "(2, 3)", "(2, 3, 4)"):
        ready().step(X, 900, X, eta=0.5, variance_noise=torch.zeros(2, 3))


def test_generator_list_of_wrong_length() -> None:
    with raises(ValueError, "generator", "3 generators", "batch size 2"):
        ready().step(X, 900, X, eta=0.5, generator=[torch.Generator() for _ in range(3)])


# ----------------------------------------------------------------------------- config files
def test_config_file_that_is_not_json(tmp_path: Path) -> None:
    (tmp_path / "scheduler_config.json").write_text("{'num_train_timesteps': 1000,")
    with raises(ValueError, "scheduler_config.json", "not valid JSON"):
        DDIMScheduler.from_pretrained(tmp_path)


def test_config_file_holding_a_list(tmp_path: Path) -> None:
    (tmp_path / "scheduler_config.json").write_text("[1, 2]")
    with raises(ValueError, "scheduler_config.json", "JSON object", "list"):
        DDIMScheduler.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("entry", "kind", "fragments"),
    [
        ({"num_train_timesteps": "1000"}, TypeError, ("num_train_timesteps", "'1000'")),
        ({"clip_sample": "false"}, TypeError, ("clip_sample", "'false'")),
        ({"beta_schedule": "cosine"}, ValueError, ("beta_schedule", "'cosine'")),
        ({"trained_betas": [0.1, 0.2]}, ValueError, ("trained_betas", "num_train_timesteps=1000")),
    ],
)
def test_config_file_with_a_wrongly_typed_value(
    tmp_path: Path, entry: dict[str, Any], kind: type[Exception], fragments: tuple[str, ...]
) -> None:
    (tmp_path / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDIMScheduler", **entry}))
    with raises(kind, *fragments):
        DDIMScheduler.from_pretrained(tmp_path)


def test_missing_config_file(tmp_path: Path) -> None:
    with raises(ValueError, "scheduler_config.json", str(tmp_path / "nowhere")):
        DDIMScheduler.from_pretrained(tmp_path / "nowhere")


def test_from_config_of_a_non_mapping() -> None:
    with raises(TypeError, "config", "mapping", "int"):
        DDIMScheduler.from_config(3)  # type: ignore[arg-type]


def test_diffusers_subclass_validates_like_ours() -> None:
    from ddim.diffusers import DDIMScheduler as DiffusersDDIM

    with raises(ValueError, "beta_schedule", "'cosine'"):
        DiffusersDDIM(beta_schedule="cosine")
    with raises(ValueError, "trained_betas"):
        DiffusersDDIM(num_train_timesteps=10, trained_betas=[0.1] * 3)
    scheduler = DiffusersDDIM()
    with raises(ValueError, "set_timesteps"):
        scheduler.step(X, 10, X)
    scheduler.set_timesteps(10)
    with raises(ValueError, "timestep=1000"):
        scheduler.step(X, 1000, X)
