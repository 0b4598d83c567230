"""``--device``: a supported device type that this machine has."""

from __future__ import annotations

import re

import torch

from ddim.app.cli.usage import UsageError

#: Device types ``--device`` accepts (with an index, ``cuda:1``).
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def check_device(text: str) -> torch.device:
    """``--device`` as a torch device, after checking that it is a supported device type this machine has."""
    match = re.fullmatch(r"([a-z]+)(?::(\d+))?", text)
    if match is None or match.group(1) not in DEVICE_TYPES:
        allowed = ", ".join(f"{kind}, {kind}:N" if kind in ("cuda", "xpu") else kind for kind in DEVICE_TYPES)
        raise UsageError(f"--device {text!r} is not supported; allowed values are {allowed}")
    kind, index = match.group(1), int(match.group(2) or 0)
    count = device_count(kind)
    if index >= count:
        raise UsageError(f"--device {text!r} is not available: this PyTorch sees {count} {kind} device(s)")
    device = torch.device(text)
    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as error:
        raise UsageError(f"--device {text!r} cannot be used: {str(error).strip().splitlines()[0]}") from error
    return device


def device_count(kind: str) -> int:
    """How many devices of ``kind`` (one of DEVICE_TYPES) this PyTorch build can use."""
    if kind == "cpu":
        return 1
    if kind == "cuda":
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    if kind == "mps":
        return int(torch.backends.mps.is_available())
    backend = getattr(torch, kind, None)
    return int(backend.device_count()) if backend is not None and backend.is_available() else 0
