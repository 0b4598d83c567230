"""Progress bars: tqdm when it is installed and a bar is asked for, a silent stand-in otherwise.

tqdm is optional (it comes with the ``cli`` extra) and imported only when a bar is shown, so
``import ddim`` never loads it. Every caller gets the same behaviour: no tqdm or ``enabled=False``
means no output and no error; ``enabled=None`` shows a bar only when stderr is a terminal. Bars write
to stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")


class Progress:
    """A bar over ``total`` units; every method is a no-op when no bar is shown."""

    def __init__(
        self, total: int | None, description: str, unit: str, enabled: bool | None = True, initial: int = 0
    ) -> None:
        self.bar: Any = None
        if enabled is None:
            enabled = sys.stderr.isatty()  # by default a bar only where a person watches
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=total, initial=initial, desc=description, unit=unit, file=sys.stderr)

    def update(self, count: int = 1) -> None:
        """Advance by ``count`` units."""
        if self.bar is not None:
            self.bar.update(count)

    def set_position(self, position: int) -> None:
        """Show ``position`` units done (for progress counted elsewhere)."""
        if self.bar is not None:
            self.bar.n = position
            self.bar.refresh()

    def set_note(self, text: str) -> None:
        """Show ``text`` after the bar (a loss, a current value)."""
        if self.bar is not None:
            self.bar.set_postfix_str(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def progress_iter(items: Iterable[T], enabled: bool | None, description: str, unit: str = "step") -> Iterator[T]:
    """Iterate ``items``, advancing a bar (see :class:`Progress`; ``enabled=None``: only on a terminal) after each."""
    if not (enabled or (enabled is None and sys.stderr.isatty())):
        yield from items
        return
    sequence = list(items)
    with Progress(len(sequence), description, unit, enabled) as bar:
        for item in sequence:
            yield item
            bar.update()
