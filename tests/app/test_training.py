"""Training of the digits UNet: a few seeded iterations (smoke), reproducibility, EMA and the LR schedule."""

from __future__ import annotations

import math

import pytest
import torch

from ddim.app.digits import SAMPLE_SHAPE, load_model
from ddim.app.digits.training import TrainConfig, learning_rate_at, save_model, train, update_ema

TINY = TrainConfig(steps=3, batch_size=8, channels=8, warmup_steps=1, ema_decay=0.5)


def test_training_is_reproducible_and_saves_a_loadable_model(tmp_path) -> None:
    losses: list[float] = []
    first, config = train(TINY, lambda step, loss: losses.append(loss))
    second, _ = train(TINY)
    assert len(losses) == TINY.steps and all(math.isfinite(x) for x in losses)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert config["unet"]["channels"] == 8 and config["scheduler"] == {"clip_sample": False}
    weights, config_path = save_model(first, config, tmp_path / "tiny.safetensors")
    assert config_path.name == "tiny.json"
    loaded, scheduler = load_model(weights)
    x, t = torch.randn(2, *SAMPLE_SHAPE), torch.tensor([3, 900])
    with torch.no_grad():
        assert torch.equal(loaded(x, t), first(x, t))
    assert scheduler.config.clip_sample is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.json", "tiny.safetensors"]


def test_a_different_seed_gives_different_weights() -> None:
    a, _ = train(TINY)
    b, _ = train(TrainConfig(**{**TINY.__dict__, "seed": 1}))
    assert not torch.equal(a.stem.weight, b.stem.weight)


def test_learning_rate_warms_up_then_follows_a_cosine() -> None:
    config = TrainConfig(steps=110, warmup_steps=10, learning_rate=1.0)
    assert learning_rate_at(0, config) == pytest.approx(0.1)
    assert learning_rate_at(9, config) == pytest.approx(1.0)
    assert learning_rate_at(10, config) == pytest.approx(1.0)
    assert learning_rate_at(60, config) == pytest.approx(0.5)
    assert learning_rate_at(110, config) == pytest.approx(0.0)


def test_ema_moves_towards_the_model_by_one_minus_decay() -> None:
    ema, model = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    with torch.no_grad():
        ema.weight.fill_(1.0)
        model.weight.fill_(3.0)
    update_ema(ema, model, decay=0.75)
    assert ema.weight.item() == pytest.approx(0.75 * 1.0 + 0.25 * 3.0)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("steps", 0, "steps=0"), ("ema_decay", 1.0, "ema_decay=1.0"), ("learning_rate", -1.0, "learning_rate=-1.0")],
)
def test_bad_config_is_rejected(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})  # type: ignore[arg-type]
