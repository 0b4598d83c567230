"""The embedded digits model's files: safetensors weights and the JSON config beside them.

The shipped weights (``ddim/app/digits/weights/digits_unet.safetensors``, EMA weights) and their
config (``digits_unet.json``: architecture and scheduler config) load through :func:`load_pretrained`.
Weights are only ever read with safetensors; pickle files are refused, never unpickled.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ddim.app.digits.unet import DigitsUNet, UNetConfig
from ddim.scheduler import DDIMScheduler
from ddim.validation import ArgumentValueError

WEIGHTS_NAME = "digits_unet.safetensors"
CONFIG_NAME = "digits_unet.json"


def weights_dir() -> Path:
    """The folder of the shipped weights inside the installed package."""
    return Path(str(resources.files("ddim.app.digits") / "weights"))


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; ``ValueError`` for a missing, unreadable, pickle or non-safetensors file.

    Never unpickles: a file that starts like a pickle or a PyTorch zip archive is refused unread.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = Path(path)
    if not file.is_file():
        raise ArgumentValueError(f"model path {str(file)!r} does not exist or is not a file")
    try:
        with file.open("rb") as handle:
            head = handle.read(2)
    except OSError as error:
        raise ArgumentValueError(f"model path {str(file)!r} cannot be read: {error.strerror}") from error
    if head[:1] == b"\x80" or head == b"PK":
        raise ArgumentValueError(
            f"model file {str(file)!r} is a pickle/PyTorch checkpoint; refused (pickle can run code). "
            "Convert it to safetensors"
        )
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as error:
        raise ArgumentValueError(f"model file {str(file)!r} is not a readable safetensors file: {error}") from error


def unet_from_state_dict(state: dict[str, torch.Tensor], config: UNetConfig) -> DigitsUNet:
    """A :class:`DigitsUNet` holding ``state``; ``ValueError`` naming missing, unexpected or mis-shaped tensors."""
    model = DigitsUNet(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ArgumentValueError(
            f"weights do not match the digits UNet (channels={config.channels}): "
            f"missing tensors {missing[:5]}, unexpected tensors {unexpected[:5]}"
        )
    for name, tensor in expected.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise ArgumentValueError(
                f"weights tensor {name!r} has shape {tuple(state[name].shape)}, the digits UNet "
                f"(channels={config.channels}) needs {tuple(tensor.shape)}"
            )
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval()


def read_model_config(path: str | Path) -> dict[str, Any]:
    """The JSON config next to a weights file: ``{"unet": {...}, "scheduler": {...}, ...}``."""
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ArgumentValueError(f"model config {str(path)!r} cannot be read as JSON: {error}") from error
    if not isinstance(config, dict) or not isinstance(config.get("unet"), dict):
        raise ArgumentValueError(f"model config {str(path)!r} must be a JSON object with a 'unet' object")
    return config


def unet_config_from_dict(values: dict[str, Any]) -> UNetConfig:
    """A :class:`UNetConfig` from a dict, rejecting unknown keys."""
    known = set(asdict(UNetConfig()))
    unknown = sorted(set(values) - known)
    if unknown:
        raise ArgumentValueError(f"unknown UNet config keys {unknown}; allowed keys are {sorted(known)}")
    return UNetConfig(**values)


def scheduler_from_config(config: dict[str, Any]) -> DDIMScheduler:
    """The scheduler recommended for a model config (its ``scheduler`` entry, else ``clip_sample=False``)."""
    return DDIMScheduler(**config.get("scheduler", {"clip_sample": False}))


def load_model(
    weights: str | Path, config_path: str | Path | None = None, device: str | torch.device = "cpu"
) -> tuple[DigitsUNet, DDIMScheduler]:
    """Load a safetensors UNet of the embedded architecture and its scheduler.

    The config is read from ``config_path``, else from a ``.json`` file next to ``weights`` with the
    same stem, else the shipped config (architecture and scheduler of the embedded model).
    """
    weights = Path(weights)
    if config_path is None:
        sibling = weights.with_suffix(".json")
        config_path = sibling if sibling.is_file() else weights_dir() / CONFIG_NAME
    config = read_model_config(config_path)
    model = unet_from_state_dict(load_state_dict(weights), unet_config_from_dict(config["unet"]))
    return model.to(device), scheduler_from_config(config)


def load_pretrained(device: str | torch.device = "cpu") -> tuple[DigitsUNet, DDIMScheduler]:
    """The embedded digits model (EMA weights, eval mode) and the scheduler configured for it.

    The scheduler has ``clip_sample=False``: clipping x_0 while stepping with the unclipped epsilon
    (diffusers' default) degrades deterministic sampling as the number of steps grows (see README).
    """
    return load_model(weights_dir() / WEIGHTS_NAME, weights_dir() / CONFIG_NAME, device)
