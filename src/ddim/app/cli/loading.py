"""Loading the model a subcommand samples: the embedded digits models, a digits UNet file, a diffusers pipeline."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from ddim.app.cli.devices import check_device
from ddim.app.cli.usage import UsageError
from ddim.app.digits.data import SAMPLE_SHAPE
from ddim.model import Model
from ddim.scheduler import DDIMScheduler
from ddim.validation import ARGUMENT_ERRORS


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
        return load_diffusers_pipeline(path, torch_device)
    try:
        unet, scheduler = digits.load_model(path, device=torch_device)
    except ValueError as error:
        raise UsageError(str(error)) from error
    if conditional and not unet.config.num_classes:
        raise UsageError(f"--model {str(path)!r} is an unconditional digits UNet; --digit needs a conditional one")
    if not conditional and unet.config.num_classes:
        raise UsageError(
            f"--model {str(path)!r} is a class-conditional digits UNet; sample it with `ddim sample --digit`"
        )
    kind = "class-conditional digits UNet" if conditional else "digits UNet"
    return LoadedModel(unet, scheduler, SAMPLE_SHAPE, f"{kind} {path}")


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """No logging and no Python warnings inside the block: diffusers' and transformers' notices
    (e.g. about ``accelerate``) would otherwise print before our one-line error."""
    previous = logging.root.manager.disable
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.CRITICAL)
        try:
            yield
        finally:
            logging.disable(previous)


def load_diffusers_pipeline(folder: Path, device: torch.device) -> LoadedModel:
    """A diffusers pipeline folder's ``unet`` (safetensors only) with our ``DDIMScheduler`` from its config."""
    from ddim.app.digits.model_files import check_schedule_values

    unet_folder = folder / "unet"
    name = str(folder)
    if not (folder / "model_index.json").is_file() or not unet_folder.is_dir():
        raise UsageError(f"--model {name!r} is a folder but not a diffusers pipeline (no model_index.json/unet)")
    if not any(unet_folder.glob("*.safetensors")):
        raise UsageError(
            f"--model {name!r}: the unet has no .safetensors weights; pickle checkpoints (.bin) are refused"
        )
    with quiet_libraries():
        try:
            from diffusers import UNet2DModel
        except ImportError as error:
            raise UsageError(
                "--model with a diffusers pipeline folder needs diffusers: pip install diffusers"
            ) from error
        try:
            values = DDIMScheduler.load_config(folder, subfolder="scheduler")
            check_schedule_values(values)
            scheduler = DDIMScheduler.from_config(values)
        except (*ARGUMENT_ERRORS, ValueError) as error:
            raise UsageError(f"--model {name!r}: scheduler config: {error}") from error
        try:
            unet = UNet2DModel.from_pretrained(unet_folder, use_safetensors=True).to(device).eval()
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:
            raise UsageError(f"--model {name!r} cannot be loaded: {error}") from error
    channels, size = unet.config.in_channels, unet.config.sample_size
    sides = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    if channels not in (1, 3) or len(sides) != 2 or not all(isinstance(n, int) and n > 0 for n in sides):
        raise UsageError(f"--model {name!r}: a PNG needs a unet of 1 or 3 channels and a positive sample_size")
    if scheduler.config.clip_sample and not scheduler.config.thresholding:
        print(
            "ddim: note: this pipeline's scheduler config has clip_sample=True; deterministic sampling with many "
            "steps degrades under it (see docs/evaluation.md, 'The clip_sample trap')",
            file=sys.stderr,
        )

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return unet(x, t).sample

    return LoadedModel(model, scheduler, (int(channels), *sides), f"diffusers pipeline {folder}")


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
