"""``ddim.diffusers.DDIMScheduler`` inside real diffusers pipelines (tiny random UNet, no hub access)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import diffusers
import pytest
import torch
from diffusers import DDIMPipeline, DDPMPipeline, DiffusionPipeline, UNet2DModel
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin

import ddim
import ddim.diffusers
from conftest import make_tiny_unet
from ddim.diffusers import DDIMScheduler


@pytest.fixture(scope="module")
def unet() -> UNet2DModel:
    return make_tiny_unet()


def test_is_a_diffusers_scheduler_running_our_core() -> None:
    scheduler = DDIMScheduler()
    assert isinstance(scheduler, diffusers.DDIMScheduler)
    assert isinstance(scheduler, SchedulerMixin)
    assert isinstance(scheduler, ddim.stepping.DDIMStepping)
    for name in ("set_timesteps", "step", "add_noise", "get_velocity", "scale_model_input"):
        assert getattr(DDIMScheduler, name) is getattr(ddim.stepping.DDIMStepping, name), name
    scheduler.set_timesteps(10)
    x = torch.randn(2, 3, 8, 8)
    out = scheduler.step(torch.randn_like(x), scheduler.timesteps[0], x)
    assert type(out) is DDIMSchedulerOutput
    assert scheduler.step(torch.randn_like(x), 901, x, return_dict=False)[0].shape == x.shape


def test_constructor_is_the_core_constructor() -> None:
    """Same arguments, order and defaults as ddim.DDIMScheduler, positional use included."""
    import inspect

    wrapped = inspect.signature(DDIMScheduler.__init__).parameters
    core = inspect.signature(ddim.DDIMScheduler.__init__).parameters
    assert [(p.name, p.default) for p in wrapped.values()] == [(p.name, p.default) for p in core.values()]
    positional = DDIMScheduler(500, 0.001)
    assert positional.config.num_train_timesteps == 500 and positional.config.beta_start == 0.001
    assert len(positional.alphas_cumprod) == 500


def test_config_and_numbers_equal_ours_and_diffusers() -> None:
    config = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1}
    wrapped, ours, theirs = DDIMScheduler(**config), ddim.DDIMScheduler(**config), diffusers.DDIMScheduler(**config)
    for key in theirs.config:
        if key != "_use_default_values":
            assert wrapped.config[key] == theirs.config[key] == ours.config[key], key
    torch.testing.assert_close(wrapped.alphas_cumprod, theirs.alphas_cumprod, rtol=0, atol=0)
    for scheduler in (wrapped, ours):
        scheduler.set_timesteps(25)
    theirs.set_timesteps(25)
    assert torch.equal(wrapped.timesteps, theirs.timesteps)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    m = torch.randn_like(x)
    for t in wrapped.timesteps.tolist():
        assert torch.equal(wrapped.step(m, t, x).prev_sample, ours.step(m, t, x).prev_sample)


def test_from_config_both_ways_and_call_time_config() -> None:
    theirs = diffusers.DDIMScheduler(prediction_type="v_prediction", timestep_spacing="trailing")
    wrapped = DDIMScheduler.from_config(theirs.config)
    assert type(wrapped) is DDIMScheduler and wrapped.config.prediction_type == "v_prediction"
    back = diffusers.DDIMScheduler.from_config(wrapped.config)
    assert type(back) is diffusers.DDIMScheduler and back.config.timestep_spacing == "trailing"
    wrapped.config.clip_sample = False  # what pipelines do; read at call time
    wrapped.set_timesteps(10)
    x = torch.full((1, 3), 40.0)
    reference = DDIMScheduler(prediction_type="v_prediction", timestep_spacing="trailing", clip_sample=False)
    reference.set_timesteps(10)
    assert torch.equal(wrapped.step(x, 999, x).prev_sample, reference.step(x, 999, x).prev_sample)
    clone = copy.deepcopy(wrapped)
    assert torch.equal(clone.step(x, 999, x).prev_sample, reference.step(x, 999, x).prev_sample)


@pytest.mark.parametrize(
    ("dtype", "eta", "clip"),
    [
        (torch.float64, 0.0, True),
        (torch.float64, 0.5, False),
        (torch.float64, 1.0, True),
        (torch.float32, 0.0, False),
        (torch.float32, 0.5, False),
        (torch.float32, 1.0, True),
    ],
)
def test_ddim_pipeline_images_equal_diffusers(unet: UNet2DModel, dtype: torch.dtype, eta: float, clip: bool) -> None:
    """12 steps, batch of 2, seeded generator: images within 1e-5 of diffusers' scheduler.

    Not float32 with eta = 0 and clipping: there, diffusers' float32 coefficients at high noise (x0 terms
    ~150 |x_t| at abar ~ 5e-5) differ from ours (float64, rounded once) by ~1e-7 of those terms, and an
    untrained UNet amplifies that to ~1e-5 in the image after 12 steps (1e-3 after 50): a property of
    the random network (float64: 4e-7 after 12 steps), not of the scheduler.
    """
    config = {"clip_sample": clip, "prediction_type": "epsilon"}
    model = copy.deepcopy(unet).to(dtype)
    reference = DDIMPipeline(unet=model, scheduler=diffusers.DDIMScheduler(**config))
    pipe = DDIMPipeline(unet=model, scheduler=diffusers.DDIMScheduler(**config))
    # DDIMPipeline.__init__ rebuilds any scheduler as diffusers' class; assigning afterwards keeps ours.
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    assert type(pipe.scheduler) is DDIMScheduler
    for p in (reference, pipe):
        p.set_progress_bar_config(disable=True)
    kwargs: dict[str, Any] = {"batch_size": 2, "num_inference_steps": 12, "eta": eta, "output_type": "np"}
    expected = reference(generator=torch.Generator().manual_seed(7), **kwargs).images
    images = pipe(generator=torch.Generator().manual_seed(7), **kwargs).images
    assert images.shape == (2, 8, 8, 3)
    assert abs(images - expected).max() <= 1e-5


@pytest.mark.parametrize("name", ["DDIMScheduler", "DDIMInverseScheduler", "DDIMParallelScheduler"])
def test_save_and_load_pipeline_gives_back_our_scheduler(unet: UNet2DModel, tmp_path: Path, name: str) -> None:
    """model_index.json records ["ddim.diffusers", NAME]; loading (module imported) returns that class."""
    cls = getattr(ddim.diffusers, name)
    scheduler = cls(prediction_type="v_prediction", clip_sample=False)
    pipe = DDPMPipeline(unet=unet, scheduler=scheduler)
    assert pipe.scheduler is scheduler
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["scheduler"] == ["ddim.diffusers", name]
    written = json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())
    assert written["_class_name"] == name and "prev_timestep_from_grid" not in written
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    assert type(loaded) is DDPMPipeline
    assert type(loaded.scheduler) is cls
    assert loaded.scheduler.config.prediction_type == "v_prediction"
    assert loaded.scheduler.config.clip_sample is False
    assert dict(loaded.scheduler.config) == {k: v for k, v in scheduler.config.items() if k != "_use_default_values"}


def test_ddim_pipeline_round_trip_gives_diffusers_class_as_documented(unet: UNet2DModel, tmp_path: Path) -> None:
    """DDIMPipeline.__init__ converts its scheduler with diffusers.DDIMScheduler.from_config, even on load."""
    pipe = DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler())
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["scheduler"] == ["ddim.diffusers", "DDIMScheduler"]
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    assert type(loaded.scheduler) is diffusers.DDIMScheduler
    assert loaded.scheduler.config.timestep_spacing == "trailing"
    loaded.scheduler = DDIMScheduler.from_config(loaded.scheduler.config)  # the documented remedy
    assert type(loaded.scheduler) is DDIMScheduler


@pytest.mark.slow
def test_core_never_imports_diffusers() -> None:
    """diffusers is an optional extra: importing and using ``ddim`` must not load it."""
    import subprocess
    import sys

    code = (
        "import sys, torch, ddim\n"
        "s = ddim.DDIMScheduler(); s.set_timesteps(5)\n"
        "s.step(torch.zeros(1, 2), int(s.timesteps[0]), torch.zeros(1, 2))\n"
        "assert 'diffusers' not in sys.modules, 'diffusers was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_readme_drop_in_example_runs(unet: UNet2DModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("<!-- example:drop-in -->") : readme.index("<!-- /example:drop-in -->")]
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {
        "pipe": DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler()),
        "model": lambda x, t: unet(x, t).sample,
    }
    exec(compile(block, "README.md", "exec"), namespace)
    assert type(namespace["pipe"].scheduler) is DDIMScheduler
    assert type(namespace["inverse"]) is ddim.diffusers.DDIMInverseScheduler
    parallel, x, window = namespace["parallel"], namespace["x"], namespace["window"]
    model_output = unet(x, window).sample
    for i, t in enumerate(window.tolist()):
        expected = parallel.step(model_output[i : i + 1], t, x[i : i + 1]).prev_sample[0]
        torch.testing.assert_close(namespace["x_prev"][i], expected)
