"""The embedded digits model: data split, image conversion, weights loading and a pinned 10-step sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ddim
from ddim import DDIMScheduler
from ddim.app.digits import (
    SAMPLE_SHAPE,
    DigitsUNet,
    UNetConfig,
    load_digits_split,
    load_pretrained,
    load_state_dict,
    to_images,
    weights_dir,
)
from ddim.sampling import sample

# Per-image means of a 10-step eta=0 sample of 4 digits from torch.Generator().manual_seed(1234), recorded
# when the shipped weights were trained (PyTorch 2.13 CPU). Tolerance covers other BLAS/CPU kernels.
REFERENCE_MEANS = [-0.51484, -0.34111, -0.4412, -0.42546]
REFERENCE_TOLERANCE = 2e-3


def test_split_is_fixed_disjoint_stratified_and_in_range() -> None:
    data = load_digits_split()
    assert data.train_images.shape == (1500, 1, 8, 8) and data.test_images.shape == (297, 1, 8, 8)
    assert data.train_images.min() == -1.0 and data.train_images.max() == 1.0
    train = {x.numpy().tobytes() for x in data.train_images}
    assert not any(x.numpy().tobytes() in train for x in data.test_images)
    counts = torch.bincount(data.test_labels, minlength=10)
    assert int(counts.min()) >= 28 and int(counts.max()) <= 31
    again = load_digits_split()
    assert torch.equal(again.test_images, data.test_images)


def test_to_images_maps_minus_one_to_black_and_one_to_white() -> None:
    x = torch.tensor([-1.0, 1.0, 0.0, 3.0, -7.0]).reshape(1, 1, 1, 5)
    assert to_images(x).tolist() == [[[0, 255, 128, 255, 0]]]
    assert to_images(torch.zeros(2, 8, 8)).dtype == np.uint8


def test_to_images_rejects_other_shapes() -> None:
    with pytest.raises(ValueError, match=r"x must have shape"):
        to_images(torch.zeros(2, 3, 8, 8))


def test_unet_maps_a_batch_to_its_own_shape_with_scalar_or_per_row_timesteps() -> None:
    model = DigitsUNet(UNetConfig(channels=8)).eval()
    x = torch.randn(3, *SAMPLE_SHAPE)
    with torch.no_grad():
        assert model(x, torch.tensor([1, 2, 3])).shape == x.shape
        assert torch.allclose(model(x, 5), model(x, torch.tensor([5, 5, 5])))


def test_unet_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="channels=0"):
        UNetConfig(channels=0)
    with pytest.raises(ValueError, match="divisible by groups"):
        UNetConfig(channels=12, groups=8)
    with pytest.raises(ValueError, match=r"channels=1000000 is out of range; allowed values are 1\.\.1024"):
        UNetConfig(channels=1000000)
    with pytest.raises(ValueError, match=r"time_dim=8192 is out of range; allowed values are 2\.\.4096"):
        UNetConfig(time_dim=8192)
    with pytest.raises(ValueError, match="time_dim=33 must be even"):
        UNetConfig(time_dim=33)
    with pytest.raises(TypeError, match="channels must be an int"):
        UNetConfig(channels=8.0)  # type: ignore[arg-type]


def test_shipped_weights_are_small_safetensors_and_load_with_the_recommended_scheduler() -> None:
    weights = weights_dir() / "digits_unet.safetensors"
    assert weights.stat().st_size <= 5 * 2**20
    assert weights.read_bytes()[:1] != b"\x80"
    model, scheduler = load_pretrained()
    assert isinstance(scheduler, DDIMScheduler) and not model.training
    assert scheduler.config.clip_sample is False
    assert scheduler.config.prediction_type == "epsilon"
    assert scheduler.config.beta_schedule == "linear" and scheduler.config.num_train_timesteps == 1000


def shipped_samples(count: int, steps: int, seed: int) -> torch.Tensor:
    """``count`` eta = 0 samples of the shipped model, x_T from ``torch.Generator().manual_seed(seed)``."""
    model, scheduler = load_pretrained()
    generator = torch.Generator().manual_seed(seed)
    shape = (count, *SAMPLE_SHAPE)
    return sample(model, scheduler, shape, num_inference_steps=steps, generator=generator, progress=False)


def test_ten_step_sample_matches_the_recorded_reference() -> None:
    x = shipped_samples(4, steps=10, seed=1234)
    means = x.mean(dim=(1, 2, 3)).tolist()
    assert means == pytest.approx(REFERENCE_MEANS, abs=REFERENCE_TOLERANCE)


def test_samples_look_like_digits_to_the_classifier() -> None:
    from ddim.app.digits.classifier import load_classifier

    x = shipped_samples(40, steps=20, seed=0)
    with torch.no_grad():
        confidence = torch.softmax(load_classifier()(x.clamp(-1, 1)), dim=1).max(dim=1).values
        noise = torch.softmax(load_classifier()(torch.randn(40, *SAMPLE_SHAPE).clamp(-1, 1)), dim=1).max(dim=1).values
    assert float(confidence.median()) > 0.9
    assert float(noise.median()) < float(confidence.median())


def test_state_dict_loader_refuses_missing_files(tmp_path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_state_dict(tmp_path / "none.safetensors")


def test_readme_example_runs() -> None:
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = text[text.index("<!-- example:embedded-model -->") : text.index("<!-- /example:embedded-model -->")]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    images = namespace["images"]
    assert isinstance(images, np.ndarray) and images.shape == (16, 8, 8) and images.dtype == np.uint8


@pytest.mark.slow
def test_inversion_reconstruction_error_falls_with_n_on_the_digits_model() -> None:
    model, scheduler = load_pretrained()
    scheduler = DDIMScheduler.from_config(scheduler.config, clip_sample=False, thresholding=False)
    x0 = load_digits_split().test_images[:16]
    errors = []
    for n in (10, 30, 100):
        x_t = ddim.invert(model, scheduler, x0, num_inference_steps=n)
        back = ddim.sample(model, scheduler, noise=x_t, num_inference_steps=n, progress=False)
        errors.append(float(((back - x0) ** 2).mean()))
    assert errors[0] > errors[1] > errors[2], errors
