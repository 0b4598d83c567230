"""The embedded digits model's files: safetensors weights and the JSON config beside them.

The shipped weights (``ddim/app/digits/weights/digits_unet.safetensors``, EMA weights) and their
config (``digits_unet.json``: architecture and scheduler config) load through :func:`load_pretrained`;
so do the class-conditional model's (``digits_unet_conditional.safetensors`` and ``.json``,
``load_pretrained(conditional=True)``).
Weights are only ever read with safetensors; pickle files are refused, never unpickled.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any, BinaryIO

import torch

from ddim.app.digits.unet import DigitsUNet, UNetConfig
from ddim.config_files import MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH
from ddim.file_input import UnreadableFileError, read_json_file
from ddim.scheduler import DDIMScheduler
from ddim.validation import ARGUMENT_ERRORS, ArgumentValueError, check_bool

WEIGHTS_NAME = "digits_unet.safetensors"
CONFIG_NAME = "digits_unet.json"
CONDITIONAL_WEIGHTS_NAME = "digits_unet_conditional.safetensors"
CONDITIONAL_CONFIG_NAME = "digits_unet_conditional.json"
#: Largest JSON header of a safetensors file (the limit of the safetensors format itself).
MAX_HEADER_BYTES = 100_000_000


def weights_dir() -> Path:
    """The folder of the shipped weights inside the installed package."""
    return Path(str(resources.files("ddim.app.digits") / "weights"))


def safetensors_header(head: bytes, handle: BinaryIO, size: int) -> dict[str, Any] | None:
    """The JSON header of a safetensors file whose first 8 bytes are ``head``, or None if it has none.

    The format: an 8-byte little-endian length N (here 2 <= N <= size - 8), then N bytes of a JSON object.
    """
    if len(head) < 8:
        return None
    length = int.from_bytes(head, "little")
    if not 2 <= length <= min(size - 8, MAX_HEADER_BYTES):
        return None
    try:
        header = json.loads(handle.read(length))
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested too deep
        return None
    return header if isinstance(header, dict) else None


def is_pickle_magic(head: bytes) -> bool:
    """Whether ``head`` starts like a PyTorch zip archive (``PK\\x03\\x04``) or a pickle (protocol 2..5)."""
    return head[:4] == b"PK\x03\x04" or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; ``ValueError`` for a missing, unreadable, pickle or non-safetensors file.

    Never unpickles: the file is parsed as safetensors (header length, JSON header); only a file that
    is not safetensors and starts like a pickle or a PyTorch zip archive is called a checkpoint.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = Path(path)
    if not file.is_file():
        raise ArgumentValueError(f"model path {str(file)!r} does not exist or is not a file")
    try:
        with file.open("rb") as handle:
            head = handle.read(8)
            header = safetensors_header(head, handle, os.fstat(handle.fileno()).st_size)
    except OSError as error:
        raise ArgumentValueError(f"model path {str(file)!r} cannot be read: {error.strerror}") from error
    if header is None and is_pickle_magic(head):
        raise ArgumentValueError(
            f"model file {str(file)!r} is a pickle/PyTorch checkpoint; refused (pickle can run code). "
            "Convert it to safetensors"
        )
    if header is None:
        raise ArgumentValueError(
            f"model file {str(file)!r} is not a readable safetensors file: no 8-byte length and JSON header"
        )
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as error:
        raise ArgumentValueError(f"model file {str(file)!r} is not a readable safetensors file: {error}") from error


def unet_from_state_dict(state: dict[str, torch.Tensor], config: UNetConfig) -> DigitsUNet:
    """A :class:`DigitsUNet` holding ``state``; ``ValueError`` naming a missing, unexpected, mis-shaped,
    non-floating-point or non-finite tensor (checked in float32, the dtype the model runs in)."""
    with torch.device("meta"):  # the expected shapes, without allocating the network
        expected = {name: tuple(tensor.shape) for name, tensor in DigitsUNet(config).state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ArgumentValueError(
            f"weights do not match the digits UNet (channels={config.channels}): "
            f"missing tensors {missing[:5]}, unexpected tensors {unexpected[:5]}"
        )
    weights = {}
    for name, shape in expected.items():
        tensor = state[name]
        if tuple(tensor.shape) != shape:
            raise ArgumentValueError(
                f"weights tensor {name!r} has shape {tuple(tensor.shape)}, the digits UNet "
                f"(channels={config.channels}) needs {shape}"
            )
        if not tensor.is_floating_point():
            raise ArgumentValueError(f"weights tensor {name!r} has dtype {tensor.dtype}; floating-point weights needed")
        weights[name] = tensor.float()
        if not bool(torch.isfinite(weights[name]).all()):
            raise ArgumentValueError(f"weights tensor {name!r} holds NaN or Inf values (in float32)")
    model = DigitsUNet(config)
    model.load_state_dict(weights)
    return model.eval()


def read_model_config(path: str | Path) -> dict[str, Any]:
    """The JSON config next to a weights file: ``{"unet": {...}, "scheduler": {...}, ...}``."""
    try:
        config = read_json_file(path, MAX_CONFIG_BYTES, follow_symlinks=True, max_depth=MAX_CONFIG_DEPTH)
    except UnreadableFileError as error:
        raise ArgumentValueError(f"model config {str(path)!r} cannot be read as JSON: {error}") from None
    if not isinstance(config, dict) or not isinstance(config.get("unet"), dict):
        raise ArgumentValueError(f"model config {str(path)!r} must be a JSON object with a 'unet' object")
    if not isinstance(config.get("scheduler", {}), dict):
        raise ArgumentValueError(f"model config {str(path)!r}: its 'scheduler' entry must be a JSON object")
    return config


def unet_config_from_dict(values: dict[str, Any]) -> UNetConfig:
    """A :class:`UNetConfig` from a dict, rejecting unknown keys (and values as :class:`UNetConfig` does)."""
    known = set(asdict(UNetConfig()))
    unknown = sorted(set(values) - known)
    if unknown:
        raise ArgumentValueError(f"unknown UNet config keys {unknown}; allowed keys are {sorted(known)}")
    return UNetConfig(**values)


def scheduler_from_config(config: dict[str, Any]) -> DDIMScheduler:
    """The scheduler recommended for a model config (its ``scheduler`` entry, else ``clip_sample=False``).

    Unknown keys are refused (keys starting with ``_`` are metadata and ignored); values are checked
    by the constructor.
    """
    values = {k: v for k, v in config.get("scheduler", {"clip_sample": False}).items() if not k.startswith("_")}
    known = DDIMScheduler.init_keys()
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ArgumentValueError(f"unknown scheduler config keys {unknown}; allowed keys are {sorted(known)}")
    return DDIMScheduler(**values)


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
    try:
        unet_config, scheduler = unet_config_from_dict(config["unet"]), scheduler_from_config(config)
    except ARGUMENT_ERRORS as error:
        raise type(error)(f"model config {str(config_path)!r}: {error}") from error
    model = unet_from_state_dict(load_state_dict(weights), unet_config)
    return model.to(device), scheduler


def load_pretrained(
    device: str | torch.device = "cpu", *, conditional: bool = False
) -> tuple[DigitsUNet, DDIMScheduler]:
    """An embedded digits model (EMA weights, eval mode) and the scheduler configured for it.

    By default the unconditional epsilon-prediction model, called as ``model(x_t, t)``; its scheduler
    has ``clip_sample=False``: clipping x_0 while stepping with the unclipped epsilon (diffusers'
    default) degrades deterministic sampling as the number of steps grows (see README).

    ``conditional=True``: the class-conditional v-prediction model, called as ``model(x_t, t, labels)``
    (digits 0-9, 10 the null label), with its zero-terminal-SNR, trailing-spacing scheduler; sample it
    with :func:`ddim.app.digits.conditional.sample_digits` (classifier-free guidance).
    """
    check_bool("conditional", conditional)
    if conditional:
        return load_model(weights_dir() / CONDITIONAL_WEIGHTS_NAME, weights_dir() / CONDITIONAL_CONFIG_NAME, device)
    return load_model(weights_dir() / WEIGHTS_NAME, weights_dir() / CONFIG_NAME, device)
