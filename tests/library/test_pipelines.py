"""Our scheduler inside real diffusers pipelines, built locally from tiny random components.

No hub access: the UNets, the VAE and the CLIP text encoder are randomly initialised, and the CLIP
tokenizer is loaded from a vocabulary and merges file written here. Every pipeline runs once with
diffusers' ``DDIMScheduler`` and once with ours (same config, same seed); the images must agree.
"""

from __future__ import annotations

import json
import string
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import ddim

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

# Stable Diffusion's scheduler settings (the pipelines rewrite steps_offset/clip_sample otherwise).
SD_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}
SIZE = 16  # image side; the two-block VAE halves it to 8x8 latents
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


def write_tiny_tokenizer(folder: Path) -> None:
    """A byte-level BPE vocabulary of single letters (plus word-final forms) and two merges for 'cat'."""
    letters = list(string.ascii_lowercase)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in [*letters, *(c + "</w>" for c in letters), "ca", "cat</w>"]:
        vocab[token] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\nc a\nca t</w>\n", encoding="utf-8")


@pytest.fixture(scope="module")
def components(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    write_tiny_tokenizer(folder)
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), model_max_length=16)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=SIZE // 2,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=2,
    ).eval()
    vae = AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        norm_num_groups=2,
    ).eval()
    text_config = CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=16,
    )
    text_encoder = CLIPTextModel(text_config).eval()
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer}


def stable_diffusion(components: dict[str, object], scheduler: object, img2img: bool = False):
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    cls = StableDiffusionImg2ImgPipeline if img2img else StableDiffusionPipeline
    pipe = cls(
        **components,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler is scheduler
    return pipe


def both(config: dict, **overrides) -> tuple[object, ddim.DDIMScheduler]:
    """diffusers' scheduler and ours, each built with from_config(config, **overrides)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return diffusers.DDIMScheduler.from_config(config, **overrides), ddim.DDIMScheduler.from_config(
            config, **overrides
        )


def test_tiny_tokenizer_is_a_real_clip_tokenizer(components: dict[str, object]) -> None:
    tokenizer = components["tokenizer"]
    assert tokenizer("a cat").input_ids == [0, 28, 55, 1]  # <start> a</w> cat</w> <end>


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_pipeline(eta: float) -> None:
    from diffusers import DDIMPipeline, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=8,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=2,
    ).eval()
    images = []
    reference, ours = both(diffusers.DDIMScheduler().config)
    for scheduler in (reference, ours):
        pipe = DDIMPipeline(unet=unet, scheduler=reference)
        pipe.scheduler = scheduler  # DDIMPipeline converts any scheduler to diffusers' DDIM in __init__
        pipe.set_progress_bar_config(disable=True)
        out = pipe(
            batch_size=2, num_inference_steps=5, eta=eta, generator=torch.Generator().manual_seed(0), output_type="np"
        )
        images.append(out.images)
    assert isinstance(pipe.scheduler, ddim.DDIMScheduler)
    assert images[0].std() > 0.01
    np.testing.assert_allclose(images[1], images[0], **TOLERANCE)


def generate(components: dict[str, object], scheduler: object, img2img: bool = False, **kwargs: object) -> np.ndarray:
    """Images of the prompt "a cat" (seed 0, numpy output); text-to-image at SIZE x SIZE unless img2img."""
    pipe = stable_diffusion(components, scheduler, img2img)
    size = {} if img2img else {"height": SIZE, "width": SIZE}
    out = pipe("a cat", generator=torch.Generator().manual_seed(0), output_type="np", **size, **kwargs)
    return out.images


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_stable_diffusion_pipeline(components: dict[str, object], eta: float) -> None:
    reference, ours = (generate(components, s, num_inference_steps=5, eta=eta) for s in both(SD_CONFIG))
    assert reference.std() > 0.01
    np.testing.assert_allclose(ours, reference, **TOLERANCE)


def test_stable_diffusion_img2img_pipeline(components: dict[str, object]) -> None:
    init = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    reference, ours = (
        generate(components, s, img2img=True, image=init, strength=0.6, num_inference_steps=10) for s in both(SD_CONFIG)
    )
    np.testing.assert_allclose(ours, reference, **TOLERANCE)


def test_zero_snr_recipe_with_v_prediction_and_guidance_rescale(components: dict[str, object]) -> None:
    """The documented recipe: from_config(..., rescale_betas_zero_snr=True, timestep_spacing="trailing")."""
    base = diffusers.DDIMScheduler(**SD_CONFIG, prediction_type="v_prediction")
    schedulers = both(base.config, rescale_betas_zero_snr=True, timestep_spacing="trailing")
    reference, ours = (generate(components, s, num_inference_steps=5, guidance_rescale=0.7) for s in schedulers)
    for scheduler in schedulers:
        assert float(scheduler.alphas_cumprod[-1]) < 1e-6  # zero terminal SNR
        assert scheduler.timesteps[0] == 999  # trailing: sampling starts at the last timestep
    np.testing.assert_allclose(ours, reference, **TOLERANCE)


def test_custom_timesteps_through_the_pipeline(components: dict[str, object]) -> None:
    """``timesteps=[...]`` reaches our set_timesteps through diffusers' retrieve_timesteps."""
    ours = ddim.DDIMScheduler(**SD_CONFIG)
    pipe = stable_diffusion(components, ours)
    pipe("a cat", height=SIZE, width=SIZE, timesteps=[901, 501, 101], output_type="np")
    assert ours.timesteps.tolist() == [901, 501, 101]
    with pytest.raises(ValueError, match="strictly decreasing"):
        pipe("a cat", height=SIZE, width=SIZE, timesteps=[101, 501], output_type="np")


def paradigms_images(components: dict[str, object], scheduler: object) -> np.ndarray:
    """ParaDiGMS parallel sampling (a window of 4 timesteps refined at once) of "a cat", seed 0."""
    pipe = diffusers.StableDiffusionParadigmsPipeline(
        **components, scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        "a cat",
        height=SIZE,
        width=SIZE,
        num_inference_steps=10,
        parallel=4,
        tolerance=0.1,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    return out.images


@pytest.mark.parametrize("cls", ["stand-alone", "subclass"])
def test_parallel_sampling_pipeline_equals_diffusers(components: dict[str, object], cls: str) -> None:
    import ddim.diffusers

    ours_cls = ddim.DDIMParallelScheduler if cls == "stand-alone" else ddim.diffusers.DDIMParallelScheduler
    reference = paradigms_images(components, diffusers.DDIMParallelScheduler(**SD_CONFIG))
    ours = paradigms_images(components, ours_cls(**SD_CONFIG))
    assert reference.std() > 0.01
    np.testing.assert_allclose(ours, reference, **TOLERANCE)


def diffedit_inversion(components: dict[str, object], inverse_scheduler: object) -> np.ndarray:
    """DiffEdit's DDIM inversion of a fixed image under the prompt "a cat" (latents, as numpy)."""
    pipe = diffusers.StableDiffusionDiffEditPipeline(
        **components,
        scheduler=diffusers.DDIMScheduler(**SD_CONFIG),
        inverse_scheduler=inverse_scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    generator = torch.Generator().manual_seed(0)  # the VAE samples its latent
    out = pipe.invert(
        prompt="a cat", image=image, num_inference_steps=6, inpaint_strength=0.8, generator=generator, output_type="np"
    )
    return out.latents.detach().numpy()


def test_editing_pipelines_invert_with_our_inverse_scheduler(components: dict[str, object]) -> None:
    import ddim.diffusers

    config = {k: v for k, v in SD_CONFIG.items() if k != "steps_offset"}
    reference = diffedit_inversion(components, diffusers.DDIMInverseScheduler(**config))
    assert reference.std() > 0.01
    for cls in (ddim.DDIMInverseScheduler, ddim.diffusers.DDIMInverseScheduler):
        np.testing.assert_allclose(diffedit_inversion(components, cls(**config)), reference, **TOLERANCE)
