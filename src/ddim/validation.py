"""Argument checks shared by every public call: one grammar, one exception class per kind of mistake.

- a value of the wrong type raises ``TypeError`` (:class:`ArgumentTypeError`):
  ``"{name} must be {what}, got {value!r} ({type})"``;
- a value of the right type outside what is allowed raises ``ValueError`` (:class:`ArgumentValueError`):
  ``"{name}={value!r} is out of range; allowed values are {allowed}"`` (numbers) or
  ``"{name}={value!r} is not supported; allowed values are [...]"`` (choices).

``bool`` is never accepted as a number (``True`` is an ``int`` to Python, never to a caller).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import NoReturn, TypeVar

import numpy as np

T = TypeVar("T")


class ArgumentValueError(ValueError):
    """An argument of the right type whose value is not allowed (raised by every check of this module)."""


class ArgumentTypeError(TypeError):
    """An argument of the wrong type (raised by every check of this module)."""


#: The errors that mean "the caller passed a bad argument": what an application reports as a usage error.
ARGUMENT_ERRORS = (ArgumentValueError, ArgumentTypeError)


def type_error(name: str, value: object, what: str) -> ArgumentTypeError:
    """The ``TypeError`` for ``value`` given as ``name`` where ``what`` is expected."""
    return ArgumentTypeError(f"{name} must be {what}, got {value!r} ({type(value).__name__})")


def range_error(name: str, value: object, allowed: str) -> ArgumentValueError:
    """The ``ValueError`` for ``name=value`` outside ``allowed``."""
    return ArgumentValueError(f"{name}={value!r} is out of range; allowed values are {allowed}")


def is_int(value: object) -> bool:
    """Whether ``value`` is a Python or numpy integer (not a bool)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_int(name: str, value: object, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int after checking ``minimum <= value <= maximum`` (each bound optional)."""
    if not is_int(value):
        raise type_error(name, value, "an int")
    number = int(value)  # type: ignore[call-overload]
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise range_error(name, number, describe_range(minimum, maximum))
    return number


def check_real(
    name: str,
    value: object,
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    open_minimum: bool = False,
    open_maximum: bool = False,
) -> float:
    """``value`` as a finite float after checking it lies within the bounds (closed unless ``open_*``).

    NaN and infinities are always out of range.
    """
    if type(value) is float and math.isfinite(value) and minimum is None and maximum is None:
        return value  # the common case, without the slower abstract-class check
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise type_error(name, value, "a real number")
    number = float(value)
    below = minimum is not None and (number <= minimum if open_minimum else number < minimum)
    above = maximum is not None and (number >= maximum if open_maximum else number > maximum)
    if not math.isfinite(number) or below or above:
        raise range_error(name, number, describe_range(minimum, maximum, open_minimum, open_maximum, real=True))
    return number


def check_bool(name: str, value: object) -> bool:
    """``value`` after checking it is a bool (``True``/``False``, numpy bools included)."""
    if not isinstance(value, (bool, np.bool_)):
        raise type_error(name, value, "a bool (True or False)")
    return bool(value)


def check_choice(name: str, value: T, allowed: Sequence[T]) -> T:
    """``value`` after checking it is one of ``allowed``."""
    if value not in allowed:
        raise ArgumentValueError(f"{name}={value!r} is not supported; allowed values are {list(allowed)}")
    return value


def check_str_choice(name: str, value: object, allowed: Sequence[str]) -> str:
    """``value`` after checking it is a string and one of ``allowed``."""
    if not isinstance(value, str):
        raise type_error(name, value, f"a string, one of {list(allowed)}")
    return check_choice(name, value, allowed)


def describe_range(
    minimum: float | None,
    maximum: float | None,
    open_minimum: bool = False,
    open_maximum: bool = False,
    real: bool = False,
) -> str:
    """Human form of a range: ``1..10``, ``>= 0``, ``(0, 1]``, ``finite``."""
    if minimum is not None and maximum is not None:
        if not real:
            return f"{minimum}..{maximum}"
        return f"{'(' if open_minimum else '['}{minimum:g}, {maximum:g}{')' if open_maximum else ']'}"
    if minimum is not None:
        return f"{'>' if open_minimum else '>='} {minimum:g}" if real else f">= {minimum}"
    if maximum is not None:
        return f"{'<' if open_maximum else '<='} {maximum:g}" if real else f"<= {maximum}"
    return "finite numbers"


class RefusesItemChanges:
    """Mixin for ``dict`` subclasses whose items mirror attributes: the methods that remove or bulk-change
    items raise ``TypeError`` naming the class and ``item_change_advice``."""

    item_change_advice = ""

    def _refuse(self, *args: object, **kwargs: object) -> NoReturn:
        raise ArgumentTypeError(f"{type(self).__name__} items cannot be changed this way; {self.item_change_advice}")

    __delitem__ = _refuse
    setdefault = _refuse
    pop = _refuse
    popitem = _refuse
    update = _refuse
    clear = _refuse
