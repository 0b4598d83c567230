"""The error of a user's making: ``ddim`` prints its message on one line and exits with code 2."""

from __future__ import annotations


class UsageError(Exception):
    """An error of the user's making: ``ddim`` prints its message on one line and exits with code 2."""
