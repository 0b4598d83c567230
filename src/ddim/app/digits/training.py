"""Training of the embedded digits model (epsilon prediction, DDPM's simple loss).

Loss (Ho et al. 2020, eq. 14; DDIM paper eq. 5 with gamma = 1):
L = E_{x_0, t, eps} || eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t) ||^2,
t uniform on 0..T-1, with diffusers' DDPM schedule (1000 linear betas 1e-4..0.02). AdamW with a
linear warm-up then cosine decay; the shipped weights are an exponential moving average (EMA).
Seeded: the same config on the same machine and PyTorch build gives the same weights.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ddim.app.atomic import write_atomically
from ddim.app.digits import DigitsUNet, UNetConfig, load_digits_split
from ddim.scheduler import DDIMScheduler
from ddim.validation import check_int, check_real

#: Scheduler config stored with the trained model: the training schedule, sampled without clipping.
SAMPLING_SCHEDULER_CONFIG: dict[str, Any] = {"clip_sample": False}


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`train` (the defaults produced the shipped weights)."""

    steps: int = 5000
    batch_size: int = 128
    learning_rate: float = 2e-3
    warmup_steps: int = 200
    ema_decay: float = 0.999
    seed: int = 0
    channels: int = 48

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "channels"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("warmup_steps", self.warmup_steps, minimum=0)
        check_int("seed", self.seed, minimum=0)
        check_real("learning_rate", self.learning_rate, 0.0, open_minimum=True)
        check_real("ema_decay", self.ema_decay, 0.0, 1.0, open_maximum=True)


def learning_rate_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up to ``learning_rate`` over ``warmup_steps``, then cosine decay to 0 at ``steps``."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.learning_rate * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter."""
    for target, source in zip(ema.parameters(), model.parameters(), strict=True):
        target.lerp_(source, 1 - decay)


def train(
    config: TrainConfig, progress: Callable[[int, float], None] | None = None
) -> tuple[DigitsUNet, dict[str, Any]]:
    """Train a :class:`DigitsUNet` on the training split; returns the EMA model and its JSON config.

    ``progress(step, loss)`` is called after every step when given.
    """
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    data = load_digits_split().train_images
    scheduler = DDIMScheduler()
    total = int(scheduler.config.num_train_timesteps)
    unet_config = UNetConfig(channels=config.channels)
    model, ema, optimizer = training_state(unet_config, config)
    for step in range(config.steps):
        index = torch.randint(0, data.shape[0], (config.batch_size,), generator=generator)
        x0 = data[index]
        t = torch.randint(0, total, (config.batch_size,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        loss = torch.nn.functional.mse_loss(model(scheduler.add_noise(x0, noise, t), t), noise)
        optimization_step(model, ema, optimizer, loss, step, config, progress)
    model_config = {
        "unet": unet_config.to_dict(),
        "scheduler": dict(SAMPLING_SCHEDULER_CONFIG),
        "training": asdict(config),
        "data": "sklearn.datasets.load_digits, training split of ddim.app.digits.load_digits_split, x = v / 8 - 1",
    }
    return ema.eval(), model_config


def training_state(
    unet_config: UNetConfig, config: TrainConfig
) -> tuple[DigitsUNet, DigitsUNet, torch.optim.Optimizer]:
    """A fresh model in training mode, its EMA copy (equal weights, no gradients) and AdamW at the base rate.

    Built in this order after ``torch.manual_seed``, so the seed fixes the initial weights.
    """
    model = DigitsUNet(unet_config)
    ema = DigitsUNet(unet_config)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.0)
    model.train()
    return model, ema, optimizer


def optimization_step(
    model: torch.nn.Module,
    ema: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss: torch.Tensor,
    step: int,
    config: TrainConfig,
    progress: Callable[[int, float], None] | None,
) -> None:
    """One AdamW step on ``loss`` at the scheduled learning rate, then the EMA update and the progress report."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate_at(step, config)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    update_ema(ema, model, config.ema_decay)
    if progress is not None:
        progress(step, float(loss.detach()))


def save_model(model: DigitsUNet, model_config: dict[str, Any], weights_path: str | Path) -> tuple[Path, Path]:
    """Write ``weights_path`` (safetensors) and the config next to it (same stem, ``.json``), atomically."""
    from safetensors.torch import save_file

    weights = Path(weights_path)
    config_path = weights.with_suffix(".json")
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    write_atomically(weights, lambda tmp: save_file(state, str(tmp)))
    write_atomically(config_path, lambda tmp: tmp.write_text(json.dumps(model_config, indent=2) + "\n"))
    return weights, config_path


if __name__ == "__main__":  # pragma: no cover - the documented full run is `ddim train`
    import sys

    started = time.perf_counter()
    trained, info = train(TrainConfig(), lambda s, loss: print(s, f"{loss:.4f}", flush=True) if s % 100 == 0 else None)
    print(save_model(trained, info, sys.argv[1]), f"{time.perf_counter() - started:.0f} s")
