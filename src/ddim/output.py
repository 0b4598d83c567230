"""The result of one scheduler step."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch


@dataclass
class DDIMSchedulerOutput:
    """Output of :meth:`ddim.DDIMScheduler.step`, shaped like diffusers' ``DDIMSchedulerOutput``.

    Attributes:
        prev_sample: x_{t-1}, the next model input.
        pred_original_sample: the predicted x_0 at this step (for previews or guidance).

    Supports attribute access, ``output[0]`` / ``output["prev_sample"]`` and ``to_tuple()``; as in
    diffusers, integer indexing skips fields that are ``None``.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None

    def to_tuple(self) -> tuple[Any, ...]:
        """The non-``None`` fields in order."""
        return tuple(getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None)

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def __getitem__(self, key: int | slice | str) -> Any:
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __iter__(self) -> Any:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())
