"""Counts in the messages of the application: a number with its noun in the right grammatical number."""

from __future__ import annotations


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``"1 sample"``, ``"2 samples"``: ``count`` with ``noun``, or its plural (default ``noun + "s"``) unless 1."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"
