"""Config behaviour of ``ddim.DDIMScheduler`` against diffusers 0.42.1: files, from_config, call-time reads.

Also the small generic attributes (``len``, ``order``, ``init_noise_sigma``, ``compatibles``), ``add_noise``
/ ``get_velocity`` parity and ``rescale_noise_cfg`` parity with diffusers' function.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import warnings
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import pytest
import torch
from diffusers.configuration_utils import FrozenDict
from hypothesis import given, settings
from hypothesis import strategies as st

import ddim
from ddim import DDIMScheduler
from ddim.config import FrozenConfig

ARGUMENT_NAMES = list(diffusers.DDIMScheduler().config.keys() - {"_use_default_values"})
NON_DEFAULT: dict[str, Any] = {
    "num_train_timesteps": 500,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "v_prediction",
    "thresholding": True,
    "dynamic_thresholding_ratio": 0.9,
    "clip_sample_range": 2.0,
    "sample_max_value": 1.5,
    "timestep_spacing": "trailing",
    "rescale_betas_zero_snr": True,
}
#: Stable Diffusion v1.5's scheduler/scheduler_config.json (a PNDM config), as published on the hub.
SD_PNDM_CONFIG: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}


def arguments(config: Any) -> dict[str, Any]:
    """The constructor arguments of a config, with arrays as lists."""
    out = {}
    for name in ARGUMENT_NAMES:
        value = config[name]
        out[name] = value.tolist() if isinstance(value, np.ndarray) else value
    return out


def step_result(scheduler: Any, n: int = 10, t: int | None = None) -> torch.Tensor:
    scheduler.set_timesteps(n)
    x = torch.linspace(-3, 3, 2 * 3 * 4, dtype=torch.float64).reshape(2, 3, 4)
    m = torch.cos(x)
    timestep = int(scheduler.timesteps[1]) if t is None else t
    return scheduler.step(m, timestep, x).prev_sample


# ----------------------------------------------------------------------------- files
@pytest.mark.parametrize(
    "overrides",
    [{}, NON_DEFAULT, {"trained_betas": np.linspace(1e-4, 0.02, 1000)}],
    ids=["defaults", "non-defaults", "trained_betas"],
)
def test_ours_saved_loads_in_diffusers_with_identical_config(tmp_path: Path, overrides: dict[str, Any]) -> None:
    ours = DDIMScheduler(**overrides)
    ours.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert written["_class_name"] == "DDIMScheduler"
    assert written["_diffusers_version"] == importlib.metadata.version("diffusers")  # as diffusers' classes write
    loaded = diffusers.DDIMScheduler.from_pretrained(tmp_path)
    direct = diffusers.DDIMScheduler(**overrides)
    assert arguments(loaded.config) == arguments(direct.config) == arguments(ours.config)
    torch.testing.assert_close(step_result(loaded), step_result(ours), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("overrides", [{}, NON_DEFAULT], ids=["defaults", "non-defaults"])
def test_diffusers_saved_loads_in_ours(tmp_path: Path, overrides: dict[str, Any]) -> None:
    theirs = diffusers.DDIMScheduler(**overrides)
    theirs.save_pretrained(tmp_path)
    ours = DDIMScheduler.from_pretrained(tmp_path)
    assert isinstance(ours, DDIMScheduler)
    assert arguments(ours.config) == arguments(theirs.config)
    ours.save_config(tmp_path / "again")
    again = json.loads((tmp_path / "again" / "scheduler_config.json").read_text())
    first = json.loads((tmp_path / "scheduler_config.json").read_text())
    # same keys, values, class name and version; ours adds only its own extra arguments (at their defaults)
    assert {k: again[k] for k in first} == first
    extra = again.keys() - first.keys()
    assert extra <= set(DDIMScheduler.init_keys()) - set(ARGUMENT_NAMES)
    assert all(again[k] == DDIMScheduler().config[k] for k in extra)


def test_subfolder_and_file_loading(tmp_path: Path) -> None:
    DDIMScheduler(**NON_DEFAULT).save_pretrained(tmp_path / "scheduler")
    by_subfolder = DDIMScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    by_file = DDIMScheduler.from_pretrained(tmp_path / "scheduler" / "scheduler_config.json")
    theirs = diffusers.DDIMScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    assert arguments(by_subfolder.config) == arguments(by_file.config) == arguments(theirs.config)
    assert arguments(by_file.config) == arguments(DDIMScheduler(**NON_DEFAULT).config)


def test_from_pretrained_of_a_stable_diffusion_folder(tmp_path: Path) -> None:
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD_PNDM_CONFIG))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = DDIMScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    assert len(caught) == 1 and "skip_prk_steps" in str(caught[0].message)
    theirs = diffusers.DDIMScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    assert arguments(ours.config) == arguments(theirs.config)


# ----------------------------------------------------------------------------- from_config
@pytest.mark.parametrize("kind", ["dict", "FrozenDict", "ours", "scheduler"])
def test_from_config_sources(kind: str) -> None:
    source = diffusers.DDIMScheduler(**NON_DEFAULT)
    config: Any = {
        "dict": dict(source.config),
        "FrozenDict": source.config,
        "ours": DDIMScheduler(**NON_DEFAULT).config,
        "scheduler": source,
    }[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = DDIMScheduler.from_config(config)
    assert isinstance(ours, DDIMScheduler)
    assert arguments(ours.config) == arguments(source.config)


def test_from_config_overrides_and_unused_kwargs() -> None:
    ours, unused = DDIMScheduler.from_config(
        {"clip_sample": False}, return_unused_kwargs=True, timestep_spacing="trailing", not_an_arg=3
    )
    assert ours.config.timestep_spacing == "trailing" and ours.config.clip_sample is False
    assert unused == {"not_an_arg": 3}


def test_pndm_config_warns_once_and_matches_diffusers() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = DDIMScheduler.from_config(FrozenDict(SD_PNDM_CONFIG), rescale_betas_zero_snr=True)
    assert len(caught) == 1
    assert "skip_prk_steps" in str(caught[0].message)
    theirs = diffusers.DDIMScheduler.from_config(FrozenDict(SD_PNDM_CONFIG), rescale_betas_zero_snr=True)
    assert arguments(ours.config) == arguments(theirs.config)
    assert ours.config["skip_prk_steps"] is True  # kept, as diffusers keeps it
    assert theirs.config["skip_prk_steps"] is True


def test_metadata_keys_as_diffusers() -> None:
    """_use_default_values names keys that take the *new* class's defaults; metadata never reaches __init__."""
    source = diffusers.EulerDiscreteScheduler(beta_schedule="scaled_linear")  # its default spacing: linspace
    assert "timestep_spacing" in source.config["_use_default_values"]
    ours = DDIMScheduler.from_config(source.config)
    theirs = diffusers.DDIMScheduler.from_config(source.config)
    assert ours.config.timestep_spacing == theirs.config.timestep_spacing == "leading"
    assert arguments(ours.config) == arguments(theirs.config)
    with_metadata = {**NON_DEFAULT, "_class_name": "DDIMScheduler", "_diffusers_version": "0.20.0"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = DDIMScheduler.from_config(with_metadata)
    assert arguments(loaded.config) == arguments(diffusers.DDIMScheduler.from_config(with_metadata).config)
    explicit = DDIMScheduler(timestep_spacing="trailing")
    assert "timestep_spacing" not in explicit.config["_use_default_values"]
    assert "clip_sample" in explicit.config["_use_default_values"]


def test_config_is_frozen_but_attribute_assignment_works() -> None:
    scheduler = DDIMScheduler()
    with pytest.raises(TypeError, match="cannot be changed"):
        scheduler.config["clip_sample"] = False
    with pytest.raises(TypeError):
        scheduler.config.update({"clip_sample": False})
    assert scheduler.config.clip_sample is True and scheduler.config["clip_sample"] is True


# ----------------------------------------------------------------------------- read at call time
@pytest.mark.parametrize("cls", [DDIMScheduler, diffusers.DDIMScheduler], ids=["ours", "diffusers"])
def test_attribute_assignment_on_config_takes_effect(cls: type) -> None:
    changed = cls(clip_sample=True)
    changed.config.clip_sample = False
    changed.config.prediction_type = "v_prediction"
    expected = step_result(cls(clip_sample=False, prediction_type="v_prediction"))
    torch.testing.assert_close(step_result(changed), expected, rtol=0, atol=0)
    changed.config.timestep_spacing = "trailing"
    changed.set_timesteps(10)
    assert changed.timesteps.tolist()[0] == 999


def test_internal_dict_replacement_takes_effect() -> None:
    ours = DDIMScheduler(clip_sample=True)
    before = step_result(ours)
    ours._internal_dict = FrozenConfig({**ours.config, "clip_sample": False, "prediction_type": "sample"})
    expected = step_result(DDIMScheduler(clip_sample=False, prediction_type="sample"))
    after = step_result(ours)
    assert not torch.equal(before, after)
    torch.testing.assert_close(after, expected, rtol=0, atol=0)
    ours.register_to_config(prediction_type="epsilon")  # diffusers' way of changing one entry
    torch.testing.assert_close(step_result(ours), step_result(DDIMScheduler(clip_sample=False)), rtol=0, atol=0)


def test_deepcopy_is_independent_and_equal() -> None:
    ours = DDIMScheduler(**NON_DEFAULT)
    ours.set_timesteps(7)
    clone = copy.deepcopy(ours)
    assert arguments(clone.config) == arguments(ours.config)
    assert torch.equal(clone.timesteps, ours.timesteps)
    t = int(ours.timesteps[2])
    torch.testing.assert_close(step_result(clone, 7, t), step_result(ours, 7, t), rtol=0, atol=0)
    clone.config.prediction_type = "epsilon"
    clone.set_timesteps(3)
    assert ours.config.prediction_type == "v_prediction" and len(ours.timesteps) == 7


# ----------------------------------------------------------------------------- generic attributes
def test_generic_attributes_match_diffusers() -> None:
    ours, theirs = DDIMScheduler(num_train_timesteps=321), diffusers.DDIMScheduler(num_train_timesteps=321)
    assert len(ours) == len(theirs) == 321
    assert ours.order == theirs.order == 1
    assert ours.init_noise_sigma == theirs.init_noise_sigma == 1.0
    assert {c.__name__ for c in ours.compatibles} == {c.__name__ for c in theirs.compatibles}
    assert DDIMScheduler in ours.compatibles and diffusers.DDIMScheduler in ours.compatibles
    assert ours.num_inference_steps is None
    torch.testing.assert_close(ours.timesteps, theirs.timesteps, rtol=0, atol=0)
    for name in ("betas", "alphas", "alphas_cumprod", "final_alpha_cumprod"):
        torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), rtol=0, atol=0)


def test_attribute_access_of_config_entries_warns_like_diffusers() -> None:
    ours = DDIMScheduler()
    with pytest.warns(FutureWarning, match="scheduler.config.clip_sample"):
        assert ours.clip_sample is True
    with pytest.raises(AttributeError, match="no_such_thing"):
        _ = ours.no_such_thing


# ----------------------------------------------------------------------------- forward process
def snapshot(scheduler: DDIMScheduler) -> dict[str, Any]:
    return {k: v.clone() if isinstance(v, torch.Tensor) else copy.copy(v) for k, v in vars(scheduler).items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("form", ["tensor", "scalar_tensor", "int"])
def test_add_noise_and_velocity_match_diffusers_without_mutation(dtype: torch.dtype, form: str) -> None:
    config = {"beta_schedule": "squaredcos_cap_v2", "rescale_betas_zero_snr": True}
    ours, theirs = DDIMScheduler(**config), diffusers.DDIMScheduler(**config)
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(4, 3, 5, generator=gen, dtype=dtype)
    noise = torch.randn(4, 3, 5, generator=gen, dtype=dtype)
    steps = torch.tensor([0, 17, 500, 999])
    ours_steps: Any = {"tensor": steps, "scalar_tensor": steps[2], "int": 500}[form]
    theirs_steps = steps if form == "tensor" else steps[2]
    before = snapshot(ours)
    tolerance = {"rtol": 1e-6, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    noisy = ours.add_noise(x0, noise, ours_steps)
    velocity = ours.get_velocity(x0, noise, ours_steps)
    assert noisy.dtype == velocity.dtype == dtype
    torch.testing.assert_close(noisy, theirs.add_noise(x0, noise, theirs_steps), **tolerance)
    torch.testing.assert_close(velocity, theirs.get_velocity(x0, noise, theirs_steps), **tolerance)
    after = snapshot(ours)
    assert before.keys() <= after.keys()
    for key, value in before.items():
        if isinstance(value, torch.Tensor):
            assert after[key].dtype == value.dtype and after[key].device == value.device
            assert torch.equal(after[key], value), key
    assert ours.alphas_cumprod.dtype == torch.float32


def test_add_noise_is_the_forward_process() -> None:
    """sqrt(abar) x0 + sqrt(1 - abar) eps, checked from the float64 alphas (DDIM paper, eq. 4)."""
    ours = DDIMScheduler()
    x0, noise = torch.full((2, 3), 0.5, dtype=torch.float64), torch.full((2, 3), -1.0, dtype=torch.float64)
    a = ours.alphas_cumprod.double()[[10, 900]].reshape(2, 1)
    expected = (a.sqrt() * 0.5 - (1 - a).sqrt()).expand(2, 3)
    torch.testing.assert_close(ours.add_noise(x0, noise, torch.tensor([10, 900])), expected, rtol=1e-14, atol=0)


# ----------------------------------------------------------------------------- guidance
@settings(max_examples=40, deadline=None)
@given(
    rescale=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_rescale_noise_cfg_matches_diffusers(rescale: float, seed: int, dtype: torch.dtype) -> None:
    # imported here: the Stable Diffusion module imports transformers, slow to load
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg as diffusers_rescale

    gen = torch.Generator().manual_seed(seed)
    cfg = torch.randn(3, 4, 6, 6, generator=gen, dtype=dtype) * 3
    text = torch.randn(3, 4, 6, 6, generator=gen, dtype=dtype)
    ours = ddim.rescale_noise_cfg(cfg, text, guidance_rescale=rescale)
    tolerance = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(ours, diffusers_rescale(cfg, text, guidance_rescale=rescale), rtol=tolerance, atol=0)
