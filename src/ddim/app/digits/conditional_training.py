"""Training of the class-conditional digits model: v-prediction on Stable Diffusion's schedule, zero terminal SNR.

Loss (Salimans & Ho, arXiv 2202.00512, sec. 4; classifier-free guidance, arXiv 2207.12598)::

    L = E_{x_0, y, t, eps} || v - v_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t, y') ||^2,
    v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0   (``scheduler.get_velocity``),

y the digit of x_0, replaced by the null label 10 with probability ``label_dropout`` (y'), t uniform on
0..T-1. With ``random_inversion`` p > 0, each drawn x_0 is replaced by -x_0 with probability p (white
digits-on-black become black-on-white: a controlled variant of the data with very bright and very dark
images, for the brightness comparison of arXiv 2305.08891). Schedule: 1000 ``scaled_linear`` betas
0.00085..0.012 (Stable Diffusion's), rescaled to zero terminal SNR (abar_{T-1} = 0, arXiv 2305.08891)
unless ``zero_snr=False`` (the control model). Optimiser, learning-rate schedule and EMA as
:mod:`ddim.app.digits.training`; seeded like it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ddim.app.digits.conditional import NULL_LABEL, NUM_LABELS, scheduler_config
from ddim.app.digits.data import load_digits_split
from ddim.app.digits.training import TrainConfig, optimization_step, save_model, training_state
from ddim.app.digits.unet import DigitsUNet, UNetConfig
from ddim.scheduler import DDIMScheduler
from ddim.validation import check_bool, check_int, check_real


@dataclass(frozen=True)
class ConditionalTrainConfig(TrainConfig):
    """Hyper-parameters of :func:`train_conditional` (the defaults produced the shipped conditional weights).

    ``zero_snr=False`` trains the control model: the same in every other respect, on the unrescaled schedule.
    """

    steps: int = 4000
    channels: int = 64
    time_dim: int = 128
    label_dropout: float = 0.1
    zero_snr: bool = True
    random_inversion: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("time_dim", self.time_dim, minimum=2)
        check_real("label_dropout", self.label_dropout, 0.0, 1.0)
        check_bool("zero_snr", self.zero_snr)
        check_real("random_inversion", self.random_inversion, 0.0, 1.0)


def drop_labels(labels: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """``labels`` with each entry replaced by the null label with ``probability`` (one uniform draw per row)."""
    keep = torch.rand(labels.shape, generator=generator) >= probability
    return torch.where(keep, labels, torch.full_like(labels, NULL_LABEL))


def invert_randomly(images: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """``images`` (N, 1, 8, 8) in [-1, 1] with each image negated with ``probability`` (one uniform draw per row)."""
    flip = torch.rand((images.shape[0], 1, 1, 1), generator=generator) < probability
    return torch.where(flip, -images, images)


def train_conditional(
    config: ConditionalTrainConfig, progress: Callable[[int, float], None] | None = None
) -> tuple[DigitsUNet, dict[str, Any]]:
    """Train a conditional :class:`DigitsUNet` (11 labels) on the training split; the EMA model and its JSON config.

    ``progress(step, loss)`` is called after every step when given.
    """
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    split = load_digits_split()
    data, targets = split.train_images, split.train_labels
    schedule = scheduler_config(config.zero_snr)
    scheduler = DDIMScheduler(**schedule)
    total = int(scheduler.config.num_train_timesteps)
    unet_config = UNetConfig(channels=config.channels, time_dim=config.time_dim, num_classes=NUM_LABELS)
    model, ema, optimizer = training_state(unet_config, config)
    for step in range(config.steps):
        index = torch.randint(0, data.shape[0], (config.batch_size,), generator=generator)
        x0, labels = data[index], drop_labels(targets[index], config.label_dropout, generator)
        if config.random_inversion > 0:  # drawn only then: the default run's random stream is unchanged
            x0 = invert_randomly(x0, config.random_inversion, generator)
        t = torch.randint(0, total, (config.batch_size,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        target = scheduler.get_velocity(x0, noise, t)
        loss = torch.nn.functional.mse_loss(model(scheduler.add_noise(x0, noise, t), t, labels), target)
        optimization_step(model, ema, optimizer, loss, step, config, progress)
    model_config = {
        "unet": unet_config.to_dict(),
        "scheduler": schedule,
        "training": asdict(config),
        "labels": f"digits 0-9; {NULL_LABEL} is the null label (dropped with probability {config.label_dropout})",
        "data": "sklearn.datasets.load_digits, training split of ddim.app.digits.load_digits_split, x = v / 8 - 1"
        + (f", negated with probability {config.random_inversion}" if config.random_inversion > 0 else ""),
    }
    return ema.eval(), model_config


if __name__ == "__main__":  # pragma: no cover - the documented full run is `ddim train --conditional`
    import sys

    started = time.perf_counter()
    trained, info = train_conditional(
        ConditionalTrainConfig(), lambda s, loss: print(s, f"{loss:.4f}", flush=True) if s % 100 == 0 else None
    )
    print(save_model(trained, info, sys.argv[1]), f"{time.perf_counter() - started:.0f} s")
