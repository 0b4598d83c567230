"""A local diffusers pipeline folder as ``--model``: its files checked as hostile input, then its UNet loaded
with our ``DDIMScheduler`` built from its ``scheduler/scheduler_config.json``."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ddim.app.cli.loading import LoadedModel
from ddim.app.cli.usage import UsageError
from ddim.config import CONFIG_NAME
from ddim.config_files import MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH, naming_file
from ddim.file_input import UnreadableFileError, open_regular_file, read_json_file
from ddim.scheduler import DDIMScheduler
from ddim.validation import ARGUMENT_ERRORS


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
    unet_folder = folder / "unet"
    name = str(folder)
    if not (folder / "model_index.json").is_file() or not unet_folder.is_dir():
        raise UsageError(f"--model {name!r} is a folder but not a diffusers pipeline (no model_index.json/unet)")
    weights = sorted(unet_folder.glob("*.safetensors"))
    if not weights:
        raise UsageError(
            f"--model {name!r}: the unet has no .safetensors weights; pickle checkpoints (.bin) are refused"
        )
    check_pipeline_files([folder / "model_index.json", unet_folder / "config.json", *weights])
    with quiet_libraries():
        try:
            from diffusers import UNet2DModel
        except ImportError as error:
            raise UsageError(
                "--model with a diffusers pipeline folder needs diffusers: pip install diffusers"
            ) from error
        try:
            values = DDIMScheduler.load_config(folder, subfolder="scheduler")
            with naming_file(folder / "scheduler" / CONFIG_NAME):
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


def check_pipeline_files(paths: list[Path]) -> None:
    """``UsageError`` unless each of ``paths`` is a regular file (or a link to one, as in the Hugging Face cache)
    and each JSON among them is within the bounds of a config file: diffusers would block on a FIFO, read a
    device without end, or recurse through a deep nesting."""
    try:
        for path in paths:
            if path.suffix == ".json":
                read_json_file(path, MAX_CONFIG_BYTES, follow_symlinks=True, max_depth=MAX_CONFIG_DEPTH)
            else:
                with open_regular_file(path, follow_symlinks=True):
                    pass
    except UnreadableFileError as error:
        raise UsageError(f"--model: {error}") from None
