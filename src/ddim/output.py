"""Step results that behave like diffusers' ``BaseOutput``: an ordered dict that is also a dataclass."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree

from ddim.validation import RefusesItemChanges


class StepOutput(RefusesItemChanges, OrderedDict):  # type: ignore[type-arg,unused-ignore]
    """Base of the step outputs: a dataclass whose non-``None`` fields are also its dict items.

    As diffusers' ``BaseOutput``: ``output.prev_sample``, ``output["prev_sample"]``, ``output[0]``
    (integer indices and slices skip ``None`` fields), ``keys()/values()/items()``, ``to_tuple()``,
    ``isinstance(output, dict)``; assigning a field updates the item and the attribute; ``pop``,
    ``update``, ``setdefault`` and ``del`` raise. Registered as a pytree node, so ``torch.compile``
    and ``torch.export`` see through it.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        pytree.register_pytree_node(
            cls,
            lambda output: (list(output.values()), list(output.keys())),
            lambda values, keys: cls(**dict(zip(keys, values, strict=True))),
            serialized_type_name=f"{cls.__module__}.{cls.__qualname__}",
        )

    def __post_init__(self) -> None:
        for field in fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            if value is not None:
                super().__setitem__(field.name, value)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return super().__getitem__(key)
        return self.to_tuple()[key]

    def __setattr__(self, name: str, value: Any) -> None:
        if value is not None and name in self.keys():
            super().__setitem__(name, value)
        super().__setattr__(name, value)

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        super().__setattr__(key, value)

    def __reduce__(self) -> Any:
        if not is_dataclass(self):
            return super().__reduce__()
        rebuild, _, *rest = super().__reduce__()
        return (rebuild, tuple(getattr(self, field.name) for field in fields(self)), *rest)

    def to_tuple(self) -> tuple[Any, ...]:
        """The non-``None`` fields, in field order."""
        return tuple(self[key] for key in self.keys())


@dataclass
class DDIMSchedulerOutput(StepOutput):
    """Output of :meth:`ddim.DDIMScheduler.step`, as diffusers' ``DDIMSchedulerOutput``.

    Attributes:
        prev_sample: x_{t-1}, the next model input.
        pred_original_sample: the predicted x_0 at this step (for previews or guidance).
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None

    def __init__(self, prev_sample: torch.Tensor, pred_original_sample: torch.Tensor | None = None) -> None:
        # written out (the generated one goes through __setattr__ and __post_init__): one per step, so it is hot
        attributes = self.__dict__
        attributes["prev_sample"], attributes["pred_original_sample"] = prev_sample, pred_original_sample
        OrderedDict.__setitem__(self, "prev_sample", prev_sample)
        if pred_original_sample is not None:
            OrderedDict.__setitem__(self, "pred_original_sample", pred_original_sample)


@dataclass
class DDIMParallelSchedulerOutput(DDIMSchedulerOutput):
    """Output of :meth:`ddim.DDIMParallelScheduler.step`, as diffusers' ``DDIMParallelSchedulerOutput``."""
