"""The one rule the codecs share for reading a number out of decoded JSON or text."""

from __future__ import annotations

import math


def finite_number(value: object) -> float | None:
    """A finite number from a number or numeric text; None otherwise (booleans included)."""
    if type(value) is str:
        try:
            number = float(value)
        except ValueError:
            return None
    elif type(value) is int or type(value) is float:
        try:
            number = float(value)
        except OverflowError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None
