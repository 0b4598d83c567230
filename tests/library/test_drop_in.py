"""What code written for diffusers' DDIM classes relies on: step outputs as mappings, ``_get_variance``,
the inverse's constructor, configs that survive save/load in both directions, and saved options."""

from __future__ import annotations

import json
import pickle
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import diffusers
import pytest
import torch
import torch.utils._pytree as pytree
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput as TheirOutput

import ddim
import ddim.diffusers
from conftest import diffusers_log_messages
from ddim.output import DDIMSchedulerOutput

#: Each family: the stand-alone class, the diffusers subclass and diffusers' own class.
FAMILIES: dict[str, tuple[type, type, type]] = {
    "DDIMScheduler": (ddim.DDIMScheduler, ddim.diffusers.DDIMScheduler, diffusers.DDIMScheduler),
    "DDIMInverseScheduler": (
        ddim.DDIMInverseScheduler,
        ddim.diffusers.DDIMInverseScheduler,
        diffusers.DDIMInverseScheduler,
    ),
    "DDIMParallelScheduler": (
        ddim.DDIMParallelScheduler,
        ddim.diffusers.DDIMParallelScheduler,
        diffusers.DDIMParallelScheduler,
    ),
}
KINDS = ("ours", "subclass", "diffusers")
EXTRA = {"prev_timestep_from_grid": False}


def without_defaults_list(config: Any) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != "_use_default_values"}


@pytest.fixture
def diffusers_warnings() -> Iterator[list[str]]:
    """The messages diffusers' config loader logs at WARNING level while the test runs."""
    with diffusers_log_messages("diffusers.configuration_utils") as records:
        yield records


# ----------------------------------------------------------------------------- step outputs
def outputs(with_x0: bool) -> tuple[DDIMSchedulerOutput, TheirOutput]:
    prev, x0 = torch.arange(4.0), -torch.arange(4.0)
    second = x0 if with_x0 else None
    return DDIMSchedulerOutput(prev, second), TheirOutput(prev, second)


@pytest.mark.parametrize("with_x0", [True, False])
def test_step_output_reads_like_diffusers_base_output(with_x0: bool) -> None:
    ours, theirs = outputs(with_x0)
    assert isinstance(ours, dict) and isinstance(theirs, dict)
    assert list(ours.keys()) == list(theirs.keys())
    assert len(ours) == len(theirs) == (2 if with_x0 else 1)
    for key in theirs:
        assert ours[key] is theirs[key] and getattr(ours, key) is getattr(theirs, key)
    for index in range(len(theirs)):
        assert ours[index] is theirs[index]
    assert [v is w for v, w in zip(ours.values(), theirs.values(), strict=True)] == [True] * len(theirs)
    assert [k for k, _ in ours.items()] == [k for k, _ in theirs.items()]
    assert all(a is b for a, b in zip(ours.to_tuple(), theirs.to_tuple(), strict=True))
    assert ours[:1][0] is theirs[:1][0]
    with pytest.raises(IndexError):
        ours[len(theirs)]
    with pytest.raises(KeyError):
        ours["missing"]
    prev, *rest = ours.to_tuple()  # the unpacking pipelines do
    assert prev is theirs.prev_sample and len(rest) == len(theirs) - 1


def test_step_output_assignment_and_refused_mutations_as_diffusers() -> None:
    ours, theirs = outputs(True)
    for output in (ours, theirs):
        output.prev_sample = torch.zeros(4)
        assert torch.equal(output["prev_sample"], torch.zeros(4)) and torch.equal(output[0], torch.zeros(4))
        output["pred_original_sample"] = torch.ones(4)
        assert torch.equal(output.pred_original_sample, torch.ones(4))
    for mutation in ("pop", "update", "setdefault"):
        with pytest.raises(Exception):  # noqa: B017 - diffusers raises bare Exception, we TypeError
            getattr(theirs, mutation)("prev_sample")
    for mutation in ("pop", "update", "setdefault", "popitem", "clear"):  # ours also refuses the last two
        with pytest.raises(TypeError, match="cannot be changed this way"):
            getattr(ours, mutation)("prev_sample")
    with pytest.raises(TypeError):
        del ours["prev_sample"]
    late = DDIMSchedulerOutput(torch.zeros(1))
    late.pred_original_sample = torch.ones(1)  # a field that was None stays out of the items, as in diffusers
    assert list(late.keys()) == ["prev_sample"]


def test_step_output_pickles_and_is_a_pytree() -> None:
    ours, _ = outputs(True)
    back = pickle.loads(pickle.dumps(ours))
    assert type(back) is DDIMSchedulerOutput and list(back.keys()) == list(ours.keys())
    assert torch.equal(back.pred_original_sample, ours.pred_original_sample)
    leaves, spec = pytree.tree_flatten(ours)
    assert len(leaves) == 2
    rebuilt = pytree.tree_unflatten([leaf * 2 for leaf in leaves], spec)
    assert type(rebuilt) is DDIMSchedulerOutput and torch.equal(rebuilt.prev_sample, ours.prev_sample * 2)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_step_output_is_a_mapping_whose_tuple_is_the_tuple_form(family: str) -> None:
    for cls in FAMILIES[family][:2]:
        scheduler = cls()
        scheduler.set_timesteps(10)
        x = torch.randn(2, 3)
        t = scheduler.timesteps[3]
        output = scheduler.step(torch.randn_like(x), t, x)
        assert isinstance(output, dict) and list(output) == ["prev_sample", "pred_original_sample"]
        ours = output.to_tuple()
        plain = scheduler.step(torch.randn_like(x), t, x, return_dict=False)
        assert len(ours) == len(plain) == 2


# ----------------------------------------------------------------------------- _get_variance
#: diffusers' DDIM scheduler test (tests/schedulers/test_scheduler_ddim.py, test_variance), default config.
DIFFUSERS_VARIANCES = [(0, 0, 0.0), (420, 400, 0.14771), (980, 960, 0.32460), (487, 486, 0.00979), (999, 998, 0.02)]


@pytest.mark.parametrize("cls", [ddim.DDIMScheduler, ddim.DDIMParallelScheduler, ddim.diffusers.DDIMScheduler])
def test_get_variance_reference_numbers(cls: type) -> None:
    scheduler = cls()
    for t, prev, expected in DIFFUSERS_VARIANCES:
        assert abs(float(scheduler._get_variance(t, prev)) - expected) < 1e-5, (t, prev)


@pytest.mark.parametrize(
    "config", [{}, {"set_alpha_to_one": False}, {"beta_schedule": "scaled_linear", "beta_end": 0.012}]
)
def test_get_variance_equals_diffusers_for_every_pair(config: dict[str, Any]) -> None:
    ours, theirs = ddim.DDIMScheduler(**config), diffusers.DDIMScheduler(**config)
    gen = torch.Generator().manual_seed(0)
    pairs = torch.randint(0, 1000, (300, 2), generator=gen)
    pairs[:50, 1] = -torch.randint(1, 100, (50,), generator=gen)  # past timestep 0: the final alpha
    for t, prev in pairs.tolist():
        expected = theirs._get_variance(t, prev)
        value = ours._get_variance(t, prev)
        assert value.dtype == expected.dtype == torch.float32 and value.shape == expected.shape == ()
        assert torch.equal(value, expected), (t, prev)
    elementwise = ours._get_variance(pairs[:, 0], pairs[:, 1])
    assert torch.equal(elementwise, torch.stack([ours._get_variance(t, p) for t, p in pairs.tolist()]))


def test_get_variance_default_landing_and_errors() -> None:
    scheduler = ddim.DDIMScheduler()
    with pytest.raises(ValueError, match="needs set_timesteps"):
        scheduler._get_variance(420)
    scheduler.set_timesteps(50)
    assert torch.equal(scheduler._get_variance(420), scheduler._get_variance(420, 400))
    with pytest.raises(ValueError, match=r"timestep=1000 is out of range; allowed values are 0\.\.999"):
        scheduler._get_variance(1000, 980)
    with pytest.raises(ValueError, match="prev_timestep contains 1000"):
        scheduler._get_variance(torch.tensor([5]), torch.tensor([1000]))
    with pytest.raises(TypeError, match="timestep must be an int"):
        scheduler._get_variance(4.5, 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="integer tensor"):
        scheduler._get_variance(torch.tensor([4.0]), 0)


# ----------------------------------------------------------------------------- the inverse's constructor
def test_inverse_takes_a_sampling_schedulers_arguments_with_one_warning() -> None:
    with pytest.warns(UserWarning) as caught:
        inverse = ddim.DDIMInverseScheduler(thresholding=True, sample_max_value=2.0, beta_end=0.012)
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert messages == [
        "config keys ['sample_max_value', 'thresholding'] are not arguments of DDIMInverseScheduler and are ignored"
    ]
    assert "thresholding" not in inverse.config and inverse.config.beta_end == 0.012
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = diffusers.DDIMInverseScheduler(thresholding=True, sample_max_value=2.0, beta_end=0.012)
    assert without_defaults_list(inverse.config) == without_defaults_list(theirs.config)
    torch.testing.assert_close(inverse.alphas_cumprod, theirs.alphas_cumprod, rtol=0, atol=0)


def test_inverse_refuses_keywords_no_ddim_class_takes() -> None:
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['beta_ends'\]"):
        ddim.DDIMInverseScheduler(beta_ends=0.1)


def test_inverse_deprecated_set_alpha_to_zero_behaves_as_in_diffusers() -> None:
    with pytest.warns(FutureWarning, match="set_alpha_to_zero is deprecated"):
        ours = ddim.DDIMInverseScheduler(set_alpha_to_zero=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = diffusers.DDIMInverseScheduler(set_alpha_to_zero=False)
        loaded = ddim.DDIMInverseScheduler.from_config(ddim.DDIMInverseScheduler().config, set_alpha_to_zero=False)
    assert ours.config.set_alpha_to_one is False and loaded.config.set_alpha_to_one is False  # the value in force
    for scheduler in (ours, theirs, loaded):
        scheduler.set_timesteps(10)
    x, m = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    expected = theirs.step(m, int(theirs.timesteps[0]), x).prev_sample
    for scheduler in (ours, loaded):
        torch.testing.assert_close(scheduler.step(m, int(scheduler.timesteps[0]), x).prev_sample, expected)


@pytest.mark.parametrize("cls", [ddim.DDIMInverseScheduler, ddim.diffusers.DDIMInverseScheduler])
def test_inverse_compatibles_hold_both_ddim_classes(cls: type) -> None:
    compatibles = cls().compatibles
    own = cls if cls is ddim.DDIMInverseScheduler else diffusers.DDIMInverseScheduler  # diffusers names its own
    assert own in compatibles and diffusers.DDIMScheduler in compatibles
    assert ddim.DDIMInverseScheduler._deprecated_kwargs == ["set_alpha_to_zero"]


# ----------------------------------------------------------------------------- configs across save and load
CONFIG = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "clip_sample": False}


@pytest.mark.parametrize("loader", KINDS)
@pytest.mark.parametrize("saver", KINDS)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_config_survives_save_and_load_between_every_pair_of_classes(
    family: str, saver: str, loader: str, tmp_path: Path, diffusers_warnings: list[str]
) -> None:
    classes = dict(zip(KINDS, FAMILIES[family], strict=True))
    source = classes[saver](**CONFIG)
    source.save_pretrained(tmp_path)
    loaded = classes[loader].from_pretrained(tmp_path)
    assert source.config["_class_name"] == family and source.config["_diffusers_version"]  # recorded on save
    expected = without_defaults_list(source.config)
    assert not set(EXTRA) & set(expected)  # our option at its default is in no config, whoever wrote it
    assert dict(loaded.config) == expected
    assert "_use_default_values" not in loaded.config  # every key came from the file
    assert diffusers_warnings == []


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_saved_and_loaded_config_equals_the_original_minus_the_defaults_list(family: str, tmp_path: Path) -> None:
    for cls in FAMILIES[family][:2]:
        original = cls(beta_end=0.03)
        original.save_pretrained(tmp_path / cls.__module__)
        loaded = cls.from_pretrained(tmp_path / cls.__module__)
        assert without_defaults_list(original.config) == loaded.config


@pytest.mark.parametrize("cls", [ddim.DDIMScheduler, ddim.diffusers.DDIMScheduler, ddim.DDIMParallelScheduler])
def test_our_options_are_saved_only_when_set(cls: type, tmp_path: Path, diffusers_warnings: list[str]) -> None:
    cls().save_pretrained(tmp_path / "default")
    assert "prev_timestep_from_grid" not in json.loads((tmp_path / "default" / "scheduler_config.json").read_text())
    diffusers.DDIMScheduler.from_pretrained(tmp_path / "default")
    assert diffusers_warnings == []
    cls(prev_timestep_from_grid=True).save_pretrained(tmp_path / "set")
    assert json.loads((tmp_path / "set" / "scheduler_config.json").read_text())["prev_timestep_from_grid"] is True
    assert cls.from_pretrained(tmp_path / "set").config.prev_timestep_from_grid is True
    diffusers.DDIMScheduler.from_pretrained(tmp_path / "set")  # the warning is right: diffusers lacks the option
    assert len(diffusers_warnings) == 1 and "prev_timestep_from_grid" in diffusers_warnings[0]


def test_defaults_list_matches_diffusers_for_keyword_construction() -> None:
    for kwargs in ({}, CONFIG, {"timestep_spacing": "trailing"}):
        ours, theirs = ddim.DDIMScheduler(**kwargs), diffusers.DDIMScheduler(**kwargs)
        assert sorted(ours.config.get("_use_default_values", [])) == sorted(theirs.config["_use_default_values"])
    everything = {k: v for k, v in without_defaults_list(diffusers.DDIMScheduler().config).items()}
    assert "_use_default_values" not in ddim.DDIMScheduler(**everything).config
