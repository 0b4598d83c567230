"""Loading the model a subcommand samples: the embedded digits models, a digits UNet file, a diffusers pipeline
(its folder read by ``ddim.app.cli.pipeline_folder``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ddim.app.cli.devices import check_device
from ddim.app.cli.usage import UsageError
from ddim.app.digits.data import SAMPLE_SHAPE
from ddim.model import Model
from ddim.scheduler import DDIMScheduler


@dataclass
class LoadedModel:
    """A model callable model(x_t, t) -> prediction, its scheduler, and the shape of one sample."""

    model: Model
    scheduler: DDIMScheduler
    sample_shape: tuple[int, ...]
    description: str


def load_model(path: Path | None, device: str, conditional: bool = False) -> LoadedModel:
    """The embedded digits model, a safetensors digits UNet, or a local diffusers pipeline folder.

    ``conditional=True`` (``ddim sample --digit``): the embedded class-conditional model, or a
    conditional digits UNet at ``path``; its ``model`` is then called as ``model(x_t, t, labels)``.
    A conditional file where an unconditional model is needed, or the reverse, is a ``UsageError``.
    """
    from ddim.app import digits

    torch_device = check_device(device)
    if path is None:
        unet, scheduler = digits.load_pretrained(torch_device, conditional=conditional)
        name = "embedded class-conditional digits model" if conditional else "embedded digits model"
        return LoadedModel(unet, scheduler, SAMPLE_SHAPE, name)
    if path.is_dir():
        if conditional:
            raise UsageError(f"--model {str(path)!r}: --digit needs a class-conditional digits UNet (.safetensors)")
        from ddim.app.cli.pipeline_folder import load_diffusers_pipeline

        return load_diffusers_pipeline(path, torch_device)
    try:
        unet, scheduler = digits.load_model(path, device=torch_device)
    except ValueError as error:
        raise UsageError(str(error)) from error
    if conditional and not unet.config.num_classes:
        raise UsageError(f"--model {str(path)!r} is an unconditional digits UNet; --digit needs a conditional one")
    if conditional and unet.config.num_classes < digits.NUM_LABELS:
        raise UsageError(
            f"--digit takes digits 0-9 and guides them with label {digits.NULL_LABEL} (no digit), but --model "
            f"{str(path)!r} has only {unet.config.num_classes} labels (0..{unet.config.num_classes - 1}); "
            f"--digit needs a class-conditional digits UNet of {digits.NUM_LABELS} labels"
        )
    if not conditional and unet.config.num_classes:
        raise UsageError(
            f"--model {str(path)!r} is a class-conditional digits UNet; sample it with `ddim sample --digit`"
        )
    kind = "class-conditional digits UNet" if conditional else "digits UNet"
    return LoadedModel(unet, scheduler, SAMPLE_SHAPE, f"{kind} {path}")


def configure_spacing(scheduler: DDIMScheduler, spacing: str | None) -> DDIMScheduler:
    """``scheduler`` with ``timestep_spacing`` replaced when ``spacing`` is given."""
    if spacing is None or spacing == scheduler.config.timestep_spacing:
        return scheduler
    return DDIMScheduler.from_config(scheduler.config, timestep_spacing=spacing)


def check_steps(steps: int, scheduler: DDIMScheduler, option: str = "--steps") -> int:
    """``steps`` after checking 1 <= steps <= the model's num_train_timesteps (``UsageError`` naming ``option``)."""
    total = int(scheduler.config.num_train_timesteps)
    if not 1 <= steps <= total:
        raise UsageError(
            f"{option} {steps} is out of range; allowed values are 1..{total} (the model's num_train_timesteps)"
        )
    return steps
