"""Numbers that enter the model: finite, and inside the range the input declares."""
from __future__ import annotations

import math

from .errors import InputError, shown


def _text(number: float) -> str:
    return str(number) if isinstance(number, int) else f"{number:g}"


def number_rule(low: float | None, high: float | None, integer: bool = False) -> str:
    """What a number input allows, in words."""
    kind = "an integer" if integer else "a finite number"
    if low is not None and high is not None:
        return f"{kind} from {_text(low)} to {_text(high)}"
    if low is not None:
        return f"{kind} of at least {_text(low)}"
    if high is not None:
        return f"{kind} of at most {_text(high)}"
    return kind


def check_number(value: object, name: str, low: float | None = None, high: float | None = None,
                 integer: bool = False) -> int | float:
    """`value` when it is a finite number (an integer with `integer`) within [low, high]; else InputError naming
    `name` and the allowed range. NaN compares false with everything, so a plain range check lets it through."""
    rule = number_rule(low, high, integer)
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise InputError(f"{name} {shown(value)} is not a number; allowed: {rule}")
    if not integer and not math.isfinite(value):
        raise InputError(f"{name} {shown(value)} is not allowed; allowed: {rule} (not NaN or infinite)")
    if (low is not None and value < low) or (high is not None and value > high):
        raise InputError(f"{name} {shown(value)} is out of range; allowed: {rule}")
    return value
