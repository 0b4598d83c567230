"""Timestep tensors of any leading shape: a (B, F) timestep steps a (B, F, ...) sample (video frames,
tokens of a diffusion policy), each element exactly as stepping its slice alone, with no host reads."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch._dynamo
from hypothesis import given, settings
from hypothesis import strategies as st

import ddim
from ddim.noise import randn_like_diffusers

SHAPE = (3, 2, 4, 5)  # (batch, frames, ...)
FRAMES = torch.tensor([[981, 501], [21, 961], [1, 441]])


def ready(**config: Any) -> ddim.DDIMScheduler:
    scheduler = ddim.DDIMScheduler(**config)
    scheduler.set_timesteps(50)
    return scheduler


def tensors(seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(SHAPE, generator=gen, dtype=torch.float64) * 2 for _ in range(3)]


def slices() -> list[tuple[slice, slice]]:
    return [(slice(i, i + 1), slice(j, j + 1)) for i in range(SHAPE[0]) for j in range(SHAPE[1])]


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("clip_sample", [False, True])
@pytest.mark.parametrize("eta", [0.0, 0.6])
def test_each_element_steps_as_its_slice_alone(prediction_type: str, clip_sample: bool, eta: float) -> None:
    scheduler = ready(prediction_type=prediction_type, clip_sample=clip_sample)
    x, m, z = tensors()
    out = scheduler.step(m, FRAMES, x, eta=eta, variance_noise=z)
    for piece in slices():
        alone = scheduler.step(m[piece], int(FRAMES[piece[0], piece[1]]), x[piece], eta=eta, variance_noise=z[piece])
        torch.testing.assert_close(out.prev_sample[piece], alone.prev_sample, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out.pred_original_sample[piece], alone.pred_original_sample, rtol=1e-12, atol=1e-12)


def test_per_row_generators_draw_each_rows_noise() -> None:
    scheduler = ready(clip_sample=False)
    x, m, _ = tensors(1)
    drawn = scheduler.step(m, FRAMES, x, eta=1.0, generator=[torch.Generator().manual_seed(s) for s in range(3)])
    noise = randn_like_diffusers(SHAPE, generator=[torch.Generator().manual_seed(s) for s in range(3)], dtype=x.dtype)
    given = scheduler.step(m, FRAMES, x, eta=1.0, variance_noise=noise)
    assert torch.equal(drawn.prev_sample, given.prev_sample)


def test_forward_process_broadcasts_too() -> None:
    scheduler = ready()
    x, noise, _ = tensors(2)
    noisy, velocity = scheduler.add_noise(x, noise, FRAMES), scheduler.get_velocity(x, noise, FRAMES)
    for piece in slices():
        t = FRAMES[piece[0], piece[1]].reshape(1)
        torch.testing.assert_close(noisy[piece], scheduler.add_noise(x[piece], noise[piece], t), rtol=0, atol=0)
        torch.testing.assert_close(velocity[piece], scheduler.get_velocity(x[piece], noise[piece], t), rtol=0, atol=0)
    rows = torch.tensor([[981], [21], [1]])  # one per batch row in any shape, as diffusers flattens it
    torch.testing.assert_close(scheduler.add_noise(x, noise, rows), scheduler.add_noise(x, noise, rows.reshape(-1)))
    assert scheduler.scale_model_input(x, FRAMES) is x


def test_thresholding_keeps_its_scale_per_batch_row() -> None:
    """Dynamic thresholding's percentile is over the whole batch row (diffusers' rule), frames included."""
    scheduler = ready(thresholding=True, clip_sample=False)
    x, m, _ = tensors(3)
    out = scheduler.step(m, FRAMES, x)
    for i in range(SHAPE[0]):
        row = scheduler.step(m[i : i + 1], FRAMES[i : i + 1], x[i : i + 1])
        torch.testing.assert_close(out.prev_sample[i : i + 1], row.prev_sample, rtol=1e-12, atol=1e-12)


def test_no_host_reads_and_one_compiled_graph() -> None:
    scheduler = ready(clip_sample=True)
    x, m, z = (torch.empty(SHAPE, device="meta") for _ in range(3))
    out = scheduler.step(m, torch.empty((3, 2), dtype=torch.int64, device="meta"), x, eta=1.0, variance_noise=z)
    assert out.prev_sample.shape == SHAPE  # on the meta device any host read would raise
    x, m, z = (t.float() for t in tensors(4))
    torch._dynamo.reset()

    def step(model_output: torch.Tensor, t: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        return scheduler.step(model_output, t, sample, eta=0.5, variance_noise=z, return_dict=False)[0]

    compiled = torch.compile(step, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(m, FRAMES, x), step(m, FRAMES, x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("timestep", "fragment"),
    [
        (torch.tensor([[981, 501, 21]] * 3), "timestep shape (3, 3) must equal the leading dimensions"),
        (torch.tensor([[981, 501]] * 2), "timestep shape (2, 2) must equal the leading dimensions"),
        (torch.tensor([981, 501]), "timestep has 2 entries"),
        (torch.tensor([[981, 1000], [21, 961], [1, 441]]), "timestep contains 1000"),
    ],
)
def test_mismatched_shapes_and_values_name_the_argument(timestep: torch.Tensor, fragment: str) -> None:
    scheduler = ready()
    x, m, _ = tensors(5)
    with pytest.raises(ValueError) as caught:
        scheduler.step(m, timestep, x)
    assert fragment in str(caught.value)
    if "contains" not in fragment:
        with pytest.raises(ValueError, match="timesteps"):
            scheduler.add_noise(x, m, timestep)


@settings(max_examples=30, deadline=None)
@given(
    batch=st.integers(1, 3),
    frames=st.integers(1, 3),
    eta=st.sampled_from([0.0, 0.8]),
    prediction_type=st.sampled_from(["epsilon", "sample", "v_prediction"]),
    seed=st.integers(0, 1000),
)
def test_property_any_leading_shape_equals_stepping_each_slice(
    batch: int, frames: int, eta: float, prediction_type: str, seed: int
) -> None:
    scheduler = ready(prediction_type=prediction_type, clip_sample=seed % 2 == 0)
    gen = torch.Generator().manual_seed(seed)
    x, m, z = (torch.randn(batch, frames, 3, generator=gen, dtype=torch.float64) for _ in range(3))
    grid = scheduler.timesteps
    timesteps = grid[torch.randint(0, len(grid), (batch, frames), generator=gen)]
    out = scheduler.step(m, timesteps, x, eta=eta, variance_noise=z)
    noisy = scheduler.add_noise(x, z, timesteps)
    assert torch.isfinite(out.prev_sample).all()
    for i in range(batch):
        for j in range(frames):
            t = int(timesteps[i, j])
            alone = scheduler.step(m[i, j], t, x[i, j], eta=eta, variance_noise=z[i, j])
            torch.testing.assert_close(out.prev_sample[i, j], alone.prev_sample, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(noisy[i, j], scheduler.add_noise(x[i, j], z[i, j], t), rtol=0, atol=0)
