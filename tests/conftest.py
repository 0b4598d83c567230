"""Shared test fixtures."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import torch


def make_tiny_unet() -> Any:
    """A tiny randomly initialised diffusers ``UNet2DModel`` (3 x 8 x 8, seeded): no hub access needed."""
    import diffusers

    torch.manual_seed(0)
    model = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    return model.eval()


@contextlib.contextmanager
def diffusers_log_messages(logger_name: str) -> Iterator[list[str]]:
    """The messages diffusers' logger ``logger_name`` (and its children) logs at WARNING or above in the block."""
    from diffusers.utils import logging as diffusers_logging

    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = diffusers_logging.get_logger(logger_name)
    handler = Collect(level=logging.WARNING)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


# ----------------------------------------------------------------------------- fault tests and skip reasons
#: Skip reasons that only say the machine has no GPU (CI has none): every other skip is listed at the end.
NO_GPU_WORDS = ("CUDA", "GPU")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "fault: an environment fault (a full disk, a read-only or unwritable target) the CLI must survive"
    )


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line on how many fault tests ran and were skipped, and every skip whose reason is not "no GPU"."""
    reports = [r for key in ("passed", "failed", "skipped") for r in terminalreporter.stats.get(key, [])]
    reports = [r for r in reports if getattr(r, "when", "collect") in ("collect", "setup", "call")]
    faults = [r for r in reports if "fault" in getattr(r, "keywords", {}) and (r.when == "call" or r.skipped)]
    other_skips = [
        (r.nodeid, skip_reason(r))
        for r in reports
        if r.skipped and not any(word in skip_reason(r) for word in NO_GPU_WORDS)
    ]
    if not faults and not other_skips:
        return
    ran = sum(1 for r in faults if not r.skipped)
    terminalreporter.write_line(
        f"fault tests: {ran} ran, {len(faults) - ran} skipped; "
        f"skipped for a reason other than no GPU: {len(other_skips)}"
    )
    for nodeid, reason in other_skips:
        terminalreporter.write_line(f"  skipped {nodeid}: {reason}")


def skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    return str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
