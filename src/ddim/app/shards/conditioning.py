"""Class-conditional shard jobs: the label of each sample (the label rule) and guided sampling of a batch.

Sample ``i`` of a run with seed ``s`` gets its label from (s, i) alone, like its seed, so labels too are
the same whatever the number of processes and the batch size:

- ``cycle`` over classes ``c_0 .. c_{k-1}``: label ``c_{i mod k}`` (every prefix of the run is balanced);
- ``uniform``: label ``c_j`` with ``j = floor(w k / 2**32)``, ``w`` the second 32-bit word of
  ``SeedSequence([s, i])`` (the first word is the sample's seed, :mod:`ddim.app.seeding`): each class has
  probability ``1/k`` up to a relative bias below ``k / 2**32``.

A batch is sampled through :func:`ddim.sample` with one generator per row, guided as ``ddim sample --digit``
guides (:data:`ddim.app.digits.conditional.GUIDANCE_KINDS`): ``cfg``, classifier-free guidance (arXiv 2207.12598)
``m = m_null + s (m_label - m_null)`` rescaled by ``phi`` (arXiv 2305.08891), :class:`ddim.ClassifierFreeGuidance`;
or ``cfg++``, CFG++ (arXiv 2406.08070) with ``lambda = s`` in [0, 1] and no rescale, :class:`ddim.CFGPlusPlus`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ddim.app.digits.conditional import GUIDANCE_KINDS, Labelled
from ddim.app.seeding import SEED_LIMIT, sample_generators
from ddim.guidance import CFGPlusPlus, ClassifierFreeGuidance
from ddim.model import Model
from ddim.sampling import sample
from ddim.scheduler_protocol import DDIMSchedulerLike
from ddim.validation import ArgumentValueError, check_int, check_real, check_str_choice, is_int

#: The label rules, as recorded in manifests.
LABEL_RULES: dict[str, str] = {
    "cycle": "classes[index % len(classes)]",
    "uniform": "classes[(SeedSequence([seed, index]).generate_state(2, uint32)[1] * len(classes)) >> 32]",
}
#: Most labels a conditional model may have (the label tensor is int64; this bounds hostile manifests).
MAX_LABELS = 1_000_000


def sample_labels(seed: int, indices: Sequence[int] | np.ndarray, classes: Sequence[int], rule: str) -> np.ndarray:
    """The label (int64) of each sample index under ``rule`` (:data:`LABEL_RULES`) over ``classes``."""
    seed = check_int("seed", seed, 0, SEED_LIMIT - 1)
    rule = check_str_choice("rule", rule, list(LABEL_RULES))
    if not classes:
        raise ArgumentValueError("classes must hold at least one label")
    table = np.asarray(list(classes), dtype=np.int64)
    values = np.asarray(indices, dtype=np.int64).reshape(-1)
    if values.size and (values.min() < 0 or values.max() >= SEED_LIMIT):
        raise ArgumentValueError(f"sample indices must lie in [0, 2**32), got {values.min()}..{values.max()}")
    if rule == "cycle":
        return table[values % len(table)]
    words = np.array(
        [np.random.SeedSequence([seed, int(i)]).generate_state(2, dtype=np.uint32)[1] for i in values],
        dtype=np.uint64,
    )
    return table[((words * np.uint64(len(table))) >> np.uint64(32)).astype(np.int64)]


@dataclass(frozen=True)
class Conditioning:
    """The labels and the guidance of a class-conditional shard job (all of it recorded in the manifest).

    ``model(x, t, labels)`` is the conditional model; ``null_label`` its unconditional label;
    ``classes`` the labels drawn from under ``rule``.
    """

    classes: tuple[int, ...]
    rule: str
    num_labels: int
    null_label: int
    guidance_scale: float = 1.0
    guidance_rescale: float = 0.0
    guidance_kind: str = "cfg"

    def __post_init__(self) -> None:
        check_int("num_labels", self.num_labels, 1, MAX_LABELS)
        check_int("null_label", self.null_label, 0, self.num_labels - 1)
        check_str_choice("rule", self.rule, list(LABEL_RULES))
        check_str_choice("guidance_kind", self.guidance_kind, list(GUIDANCE_KINDS))
        check_real("guidance_scale", self.guidance_scale, 0.0)
        check_real("guidance_rescale", self.guidance_rescale, 0.0, 1.0)
        if self.guidance_kind == "cfg++":
            check_real("guidance_scale", self.guidance_scale, 0.0, 1.0)
            if self.guidance_rescale != 0.0:
                raise ArgumentValueError(
                    f"guidance_rescale={self.guidance_rescale!r} is for guidance_kind='cfg'; CFG++ takes 0"
                )
        if not self.classes:
            raise ArgumentValueError("classes must hold at least one label")
        for label in self.classes:
            check_int("classes", label, 0, self.num_labels - 1)

    def labels(self, seed: int, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        return sample_labels(seed, indices, self.classes, self.rule)

    def describe(self) -> dict[str, Any]:
        """The manifest's ``config.conditioning``."""
        return {
            "classes": list(self.classes),
            "label_rule": self.rule,
            "label_rule_text": LABEL_RULES[self.rule],
            "num_labels": self.num_labels,
            "null_label": self.null_label,
            "guidance_kind": self.guidance_kind,
            "guidance_scale": float(self.guidance_scale),
            "guidance_rescale": float(self.guidance_rescale),
        }

    @property
    def guided(self) -> bool:
        """Whether the null-label pass runs (CFG++ always; CFG at s = 1 without rescale is the conditional model)."""
        return self.guidance_kind == "cfg++" or self.guidance_scale != 1.0 or self.guidance_rescale > 0.0

    def guided_model(self, model: Model, labels: torch.Tensor) -> Model:
        """``model`` guided for rows of ``labels`` (:class:`ddim.CFGPlusPlus`, :class:`ddim.ClassifierFreeGuidance`)."""
        conditional, unconditional = Labelled(model, labels), Labelled(model, torch.full_like(labels, self.null_label))
        if self.guidance_kind == "cfg++":
            return CFGPlusPlus(conditional, unconditional, self.guidance_scale)
        return ClassifierFreeGuidance(conditional, unconditional, self.guidance_scale, self.guidance_rescale)

    def sample(
        self,
        model: Model,
        scheduler: DDIMSchedulerLike,
        labels: np.ndarray,
        seeds: np.ndarray,
        shape: Sequence[int],
        *,
        num_inference_steps: int,
        eta: float,
        device: torch.device,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """One guided batch: row r of label ``labels[r]`` drawn with generator seed ``seeds[r]``."""
        return sample(
            self.guided_model(model, torch.as_tensor(labels, dtype=torch.int64)),
            scheduler,
            (len(seeds), *shape),
            num_inference_steps=num_inference_steps,
            eta=eta,
            generator=sample_generators(seeds),
            device=device,
            dtype=dtype,
            progress=False,
        )


def conditioning_from_config(config: dict[str, Any]) -> Conditioning | None:
    """The conditioning a manifest's config records (None for an unconditional run); ``ArgumentValueError`` naming
    the field when it is not well formed (a manifest is read from disk: hostile until checked)."""
    recorded = config.get("conditioning")
    if recorded is None:
        return None
    if not isinstance(recorded, dict):
        raise ArgumentValueError(f"config.conditioning={recorded!r} is not a JSON object")
    classes = recorded.get("classes")
    if not isinstance(classes, list) or not all(is_int(c) for c in classes) or len(classes) > MAX_LABELS:
        raise ArgumentValueError(f"config.conditioning.classes={classes!r} is not a list of labels")
    try:
        conditioning = Conditioning(
            tuple(classes),
            recorded.get("label_rule"),  # type: ignore[arg-type]
            recorded.get("num_labels"),  # type: ignore[arg-type]
            recorded.get("null_label"),  # type: ignore[arg-type]
            recorded.get("guidance_scale"),  # type: ignore[arg-type]
            recorded.get("guidance_rescale"),  # type: ignore[arg-type]
            recorded.get("guidance_kind"),  # type: ignore[arg-type]
        )
    except (ValueError, TypeError) as error:
        raise ArgumentValueError(f"config.conditioning is not well formed: {error}") from error
    if recorded != conditioning.describe():
        raise ArgumentValueError("config.conditioning is not well formed: its label rule text or keys differ")
    return conditioning


def labels_problem(arrays: dict[str, np.ndarray], config: dict[str, Any]) -> str | None:
    """Why a shard's ``labels`` do not follow the run's label rule (or are there in an unconditional run), or None."""
    conditioning = conditioning_from_config(config)
    labels = arrays.get("labels")
    if conditioning is None:
        return None if labels is None else "holds labels, but the run is unconditional"
    indices = arrays["indices"]
    expected = conditioning.labels(config["seed"], indices)
    if labels is None or labels.dtype != np.int64 or not np.array_equal(labels, expected):
        return f"its labels are not those of the label rule {conditioning.rule!r} for seed {config['seed']}"
    return None
