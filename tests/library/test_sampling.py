"""``ddim.sample``: the sampling loop with guidance, inpainting, trajectories and checks."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ddim
from ddim.analytic import GaussianMixtureModel
from ddim.guidance import rescale_noise_cfg

PREDICTION_TYPES = ["epsilon", "sample", "v_prediction"]
README = Path(__file__).resolve().parents[2] / "README.md"


def scheduler_and_model(prediction_type: str = "epsilon", **config) -> tuple[ddim.DDIMScheduler, GaussianMixtureModel]:
    scheduler = ddim.DDIMScheduler(clip_sample=False, prediction_type=prediction_type, **config)
    means = torch.tensor([[1.0, -1.0, 0.5], [-1.0, 0.5, 0.0]])
    model = GaussianMixtureModel(scheduler.alphas_cumprod, means, [0.3, 0.2], prediction_type=prediction_type)
    return scheduler, model


def manual_loop(model, scheduler, x, n, eta=0.0, generator=None, guide=None):
    """The reference: the README quickstart loop written out with scheduler.step."""
    scheduler.set_timesteps(n)
    for t in scheduler.timesteps:
        t_batch = torch.full((x.shape[0],), int(t), dtype=torch.int64)
        out = model(x, t_batch) if guide is None else guide(x, t_batch)
        x = scheduler.step(out, int(t), x, eta=eta, generator=generator).prev_sample
    return x


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_sample_equals_the_manual_loop(prediction_type: str, eta: float) -> None:
    scheduler, model = scheduler_and_model(prediction_type)
    x_t = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    got = ddim.sample(
        model, scheduler, noise=x_t, num_inference_steps=20, eta=eta, generator=torch.Generator().manual_seed(1)
    )
    expected = manual_loop(model, scheduler, x_t, 20, eta, torch.Generator().manual_seed(1))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_sample_drives_the_diffusers_flavoured_scheduler_too() -> None:
    from ddim.diffusers import DDIMScheduler as DiffusersFlavoured

    scheduler, model = scheduler_and_model("v_prediction")
    other = DiffusersFlavoured.from_config(scheduler.config)
    x_t = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    expected = ddim.sample(model, scheduler, noise=x_t, num_inference_steps=10, progress=False)
    got = ddim.sample(model, other, noise=x_t, num_inference_steps=10, progress=False)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_initial_noise_is_drawn_as_diffusers_randn_tensor() -> None:
    from diffusers.utils.torch_utils import randn_tensor

    scheduler, model = scheduler_and_model()
    got = ddim.sample(
        model, scheduler, (4, 3), num_inference_steps=5, generator=torch.Generator().manual_seed(3), progress=False
    )
    x_t = randn_tensor((4, 3), generator=torch.Generator().manual_seed(3))
    expected = manual_loop(model, scheduler, x_t, 5)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_model_is_called_with_a_batch_of_int64_timesteps() -> None:
    scheduler, model = scheduler_and_model()
    seen = []

    def spy(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append((t.dtype, tuple(t.shape), t.device, x.dtype))
        return model(x, t)

    ddim.sample(spy, scheduler, (5, 3), num_inference_steps=4, dtype=torch.float64, progress=False)
    assert seen == [(torch.int64, (5,), torch.device("cpu"), torch.float64)] * 4


def test_custom_grid_and_trajectories() -> None:
    scheduler, model = scheduler_and_model()
    calls = []
    out = ddim.sample(
        model,
        scheduler,
        (3, 3),
        timesteps=[999, 600, 200, 50],
        return_intermediates=True,
        return_x0_predictions=True,
        callback=lambda i, t, x, x0: calls.append((i, t, x.shape, x0.shape)),
        progress=False,
    )
    assert isinstance(out, ddim.SamplingOutput)
    assert out.timesteps == [999, 600, 200, 50]
    assert len(out.intermediates) == 5 and len(out.x0_predictions) == 4
    assert calls == [(i, t, (3, 3), (3, 3)) for i, t in enumerate([999, 600, 200, 50])]
    torch.testing.assert_close(out.intermediates[-1], out.samples)
    # The last step lands on abar = 1, where x_prev is the predicted x0 itself.
    torch.testing.assert_close(out.x0_predictions[-1], out.samples)


def test_distribution_of_samples_matches_the_data() -> None:
    scheduler = ddim.DDIMScheduler(clip_sample=False, timestep_spacing="trailing")
    model = GaussianMixtureModel(scheduler.alphas_cumprod, [[0.5]], 0.2)
    for eta in (0.0, 1.0):
        x = ddim.sample(
            model,
            scheduler,
            (4000, 1),
            num_inference_steps=1000,
            eta=eta,
            dtype=torch.float64,
            generator=torch.Generator().manual_seed(0),
            progress=False,
        )
        assert abs(float(x.mean()) - 0.5) < 0.012
        assert abs(float(x.std()) - 0.2) < 0.012


@settings(max_examples=10, deadline=None)
@given(seeds=st.lists(st.integers(0, 2**31), min_size=2, max_size=4, unique=True), eta=st.sampled_from([0.0, 0.7]))
def test_a_sample_depends_on_its_own_seed_not_on_its_batch(seeds: list[int], eta: float) -> None:
    scheduler, model = scheduler_and_model()
    batch = ddim.sample(
        model,
        scheduler,
        (len(seeds), 3),
        num_inference_steps=8,
        eta=eta,
        generator=[torch.Generator().manual_seed(s) for s in seeds],
        progress=False,
    )
    for i, seed in enumerate(seeds):
        alone = ddim.sample(
            model,
            scheduler,
            (1, 3),
            num_inference_steps=8,
            eta=eta,
            generator=[torch.Generator().manual_seed(seed)],
            progress=False,
        )
        torch.testing.assert_close(batch[i : i + 1], alone, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- guidance
@pytest.mark.parametrize("rescale", [0.0, 0.7])
def test_classifier_free_guidance(rescale: float) -> None:
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg as reference_rescale

    scheduler, conditional = scheduler_and_model()
    unconditional = GaussianMixtureModel(scheduler.alphas_cumprod, torch.zeros(1, 3), 1.0)
    x_t = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c, u = conditional(x, t), unconditional(x, t)
        g = u + 3.0 * (c - u)
        return reference_rescale(g, c, guidance_rescale=rescale) if rescale else g

    got = ddim.sample(
        conditional,
        scheduler,
        noise=x_t,
        num_inference_steps=10,
        guidance_scale=3.0,
        unconditional_model=unconditional,
        guidance_rescale=rescale,
        progress=False,
    )
    expected = manual_loop(conditional, scheduler, x_t, 10, guide=guided)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    if rescale:
        assert not torch.allclose(got, ddim.sample(conditional, scheduler, noise=x_t, num_inference_steps=10))
    assert rescale_noise_cfg is ddim.rescale_noise_cfg


def test_guidance_scale_without_unconditional_branch_is_refused() -> None:
    scheduler, model = scheduler_and_model()
    with pytest.raises(ValueError, match=r"guidance_scale=7\.5 .* need an unconditional branch"):
        ddim.sample(model, scheduler, (1, 3), guidance_scale=7.5)
    with pytest.raises(ValueError, match="guidance_rescale"):
        ddim.sample(model, scheduler, (1, 3), guidance_rescale=0.7)
    with pytest.raises(ValueError, match=r"guidance_rescale=1\.5 is out of range"):
        ddim.sample(model, scheduler, (1, 3), guidance_rescale=1.5, unconditional_model=model)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_classifier_guidance_shifts_eps_by_the_scaled_gradient(prediction_type: str) -> None:
    """Guidance is defined on eps (arXiv 2105.05233, Algorithm 2); every prediction type gives the same samples."""
    scheduler, model = scheduler_and_model(prediction_type)
    eps_scheduler, eps_model = scheduler_and_model("epsilon")
    x_t = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    target = torch.tensor([2.0, 0.0, -1.0], dtype=torch.float64)

    def gradient(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = x.requires_grad_(True)
        log_likelihood = -0.5 * ((x - target) ** 2).sum()  # a Gaussian "classifier"
        return torch.autograd.grad(log_likelihood, x)[0]

    alphas = eps_scheduler.alphas_cumprod.double()

    def guided_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = alphas[t].reshape(-1, 1)
        return eps_model(x, t) - (1 - a).sqrt() * 2.5 * (target - x)

    got = ddim.sample(
        model,
        scheduler,
        noise=x_t,
        num_inference_steps=10,
        classifier_gradient=gradient,
        classifier_scale=2.5,
        progress=False,
    )
    expected = manual_loop(eps_model, eps_scheduler, x_t, 10, guide=guided_eps)
    torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-7)
    unguided = ddim.sample(model, scheduler, noise=x_t, num_inference_steps=10, progress=False)
    assert float((got - target).norm()) < float((unguided - target).norm())


# ----------------------------------------------------------------------------- inpainting
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_inpainting_keeps_the_known_region(eta: float) -> None:
    scheduler, model = scheduler_and_model(set_alpha_to_one=False)
    known = torch.full((4, 3), 7.0)
    mask = torch.tensor([1.0, 0.0, 1.0])
    out = ddim.sample(
        model,
        scheduler,
        (4, 3),
        num_inference_steps=10,
        eta=eta,
        known=known,
        known_mask=mask,
        return_intermediates=True,
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    assert torch.equal(out.samples[:, [0, 2]], known[:, [0, 2]])
    assert (out.samples[:, 1].abs() < 5).all()  # the generated column comes from the data, not the known image
    # Before the end the known region is noised to the landing timestep: close to sqrt(abar) * 7.
    scheduler.set_timesteps(10)
    landing = scheduler.previous_timestep(int(scheduler.timesteps[0]))
    a = float(scheduler.alphas_cumprod[landing])
    spread = (out.intermediates[1][:, 0] - math.sqrt(a) * 7.0) / math.sqrt(1 - a)
    assert spread.abs().max() < 5


def test_inpainting_with_a_boolean_mask_and_per_row_mask() -> None:
    scheduler, model = scheduler_and_model()
    known = torch.zeros(2, 3)
    mask = torch.tensor([[True, False, False], [False, False, True]])
    x = ddim.sample(model, scheduler, (2, 3), num_inference_steps=5, known=known, known_mask=mask, progress=False)
    assert x[0, 0] == 0 and x[1, 2] == 0 and x[0, 1] != 0


def test_inpainting_mask_errors() -> None:
    scheduler, model = scheduler_and_model()
    with pytest.raises(ValueError, match=r"known_mask shape \(2,\) does not broadcast to the sample shape \(4, 3\)"):
        ddim.sample(model, scheduler, (4, 3), known=torch.zeros(4, 3), known_mask=torch.ones(2))
    with pytest.raises(ValueError, match=r"known_mask values must lie in \[0, 1\]"):
        ddim.sample(model, scheduler, (4, 3), known=torch.zeros(4, 3), known_mask=torch.full((3,), 2.0))
    with pytest.raises(ValueError, match="needs both known"):
        ddim.sample(model, scheduler, (4, 3), known=torch.zeros(4, 3))


# ----------------------------------------------------------------------------- checks and errors
def test_check_finite_names_the_step() -> None:
    scheduler, model = scheduler_and_model()

    def broken(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = model(x, t)
        return out / 0 if int(t[0]) < 500 else out

    scheduler.set_timesteps(10)
    assert scheduler.timesteps.tolist()[5] == 400  # the first timestep below 500
    with pytest.raises(ddim.NonFiniteOutputError, match=r"model output at step 5 \(timestep 400\) contains NaN or Inf"):
        ddim.sample(broken, scheduler, (2, 3), num_inference_steps=10, check_finite=True, progress=False)
    assert issubclass(ddim.NonFiniteOutputError, ValueError)
    x = ddim.sample(broken, scheduler, (2, 3), num_inference_steps=10, progress=False)  # unchecked: no error
    assert not torch.isfinite(x).all()


def test_shape_and_noise_errors() -> None:
    scheduler, model = scheduler_and_model()
    with pytest.raises(ValueError, match="needs shape or noise"):
        ddim.sample(model, scheduler)
    with pytest.raises(ValueError, match=r"shape=\(2, 3\) disagrees with noise.shape=\(4, 3\)"):
        ddim.sample(model, scheduler, (2, 3), noise=torch.zeros(4, 3))
    with pytest.raises(ValueError, match="shape="):
        ddim.sample(model, scheduler, (0, 3))
    with pytest.raises(ValueError, match=r"model output at step 0 .* must be a tensor of shape"):
        ddim.sample(lambda x, t: x[:1], scheduler, (2, 3), progress=False)
    with pytest.raises(ValueError, match="generator is a list of 1 generators"):
        ddim.sample(model, scheduler, (2, 3), generator=[torch.Generator()])


def test_progress_bar_can_be_turned_off_and_tqdm_is_optional(capsys, monkeypatch) -> None:
    scheduler, model = scheduler_and_model()
    ddim.sample(model, scheduler, (1, 3), num_inference_steps=3, progress=True)
    assert "DDIM sampling" in capsys.readouterr().err
    ddim.sample(model, scheduler, (1, 3), num_inference_steps=3, progress=False)
    assert capsys.readouterr().err == ""
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import fails as if tqdm were not installed
    ddim.sample(model, scheduler, (1, 3), num_inference_steps=3, progress=True)
    assert capsys.readouterr().err == ""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sampling_on_cuda_matches_the_cpu() -> None:
    scheduler, model = scheduler_and_model()
    x_t = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    cpu = ddim.sample(model, scheduler, noise=x_t, num_inference_steps=10, eta=0.5, generator=torch.Generator())
    cuda = ddim.sample(
        model, scheduler, noise=x_t, device="cuda", num_inference_steps=10, eta=0.5, generator=torch.Generator()
    )
    assert cuda.device.type == "cuda"
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- README
def readme_section_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    start = text.index("<!-- example:beyond -->")
    end = text.index("<!-- /example:beyond -->")
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.DOTALL)


def test_readme_examples_run() -> None:
    blocks = readme_section_blocks()
    assert len(blocks) >= 5
    grids = (README.parent / "docs" / "grids.md").read_text(encoding="utf-8")
    blocks += re.findall(r"```python\n(.*?)```", grids, flags=re.DOTALL)
    namespace: dict[str, object] = {}
    for block in blocks:  # blocks share one namespace, as when read top to bottom
        exec(compile(block, str(README), "exec"), namespace)


def test_readme_quickstart_runs_as_pasted() -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("<!-- example:quickstart -->") :]
    block = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)[0]
    namespace: dict[str, object] = {}  # nothing defined beforehand: the block must bring its own model
    exec(compile(block, str(README), "exec"), namespace)
    loop, whole = namespace["x"], namespace["x0"]
    assert isinstance(loop, torch.Tensor) and isinstance(whole, torch.Tensor)
    assert loop.shape == whole.shape == (1, 3, 32, 32) and bool(torch.isfinite(loop).all())
