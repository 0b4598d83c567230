"""Wall time of a block of work, as the subcommands and the evaluations report it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def timed() -> Iterator[list[float]]:
    """Context manager yielding a list that holds the elapsed seconds once the block ends."""
    elapsed: list[float] = []
    start = time.perf_counter()
    try:
        yield elapsed
    finally:
        elapsed.append(time.perf_counter() - start)
