"""Per-sample seeds: sample ``index`` of a run with seed ``seed`` gets its own generator.

A sample then depends on (seed, index) alone, never on the batch, shard or process that drew it.
The seed of a sample is the first 32-bit word of numpy's ``SeedSequence([seed, index])``, a hash:
PyTorch's CPU generator keeps only the low 32 bits of a seed, so an arithmetic rule such as
``seed * 2**32 + index`` would give every run seed the same samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ddim.validation import ArgumentValueError, check_int

#: Description of the rule, recorded in manifests.
SEED_RULE = "SeedSequence([seed, index]).generate_state(1, uint32)[0]"
#: Seeds and indices must lie in [0, SEED_LIMIT).
SEED_LIMIT = 2**32


def sample_seeds(seed: int, indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """The 32-bit seed (uint32) of each sample index; ``seed`` and indices must lie in [0, 2**32)."""
    seed = check_int("seed", seed, 0, SEED_LIMIT - 1)
    values = np.asarray(indices, dtype=np.int64).reshape(-1)
    if values.size and (values.min() < 0 or values.max() >= SEED_LIMIT):
        raise ArgumentValueError(f"sample indices must lie in [0, 2**32), got {values.min()}..{values.max()}")
    return np.array(
        [np.random.SeedSequence([int(seed), int(i)]).generate_state(1, dtype=np.uint32)[0] for i in values],
        dtype=np.uint32,
    )


def sample_generators(seeds: Sequence[int] | np.ndarray, device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One generator on ``device`` per sample, seeded with its seed."""
    return [torch.Generator(device).manual_seed(int(s)) for s in seeds]


def row_generators(seed: int, start: int, count: int, device: str | torch.device = "cpu") -> list[torch.Generator]:
    """Generators of the samples with global indices ``start .. start + count - 1``."""
    return sample_generators(sample_seeds(seed, np.arange(start, start + count)), device)
