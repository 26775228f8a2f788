"""A message's plain readings packed into one text, kept in its journal row.

Most messages carry only plain readings: a finite number each, channel 0, no unit, no details,
all at one instant. The journal keeps those packed as `<time>RS<quantities>RS<values>`, the
quantities and the values each joined by US, every number written as the shortest text that
reads back as exactly the same float (Python's repr). A sink that writes text (InfluxDB line
protocol) then renders a message from its journal row alone: no reading rows to read and no
object per reading, which at a million readings is most of the sink's work. The readings table
stays the record that queries and the console read.

Hand-written because the text is ours: a format like JSON would parse every number into a
float only for the sink to write it back as text.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import copysign, isfinite

from fieldbridge.model import Reading

RS, US = "\x1e", "\x1f"


def pack(readings: Sequence[Reading]) -> str | None:
    """The packed text of `readings`, or None when one is not plain, they are not all at one
    time, or a quantity holds a separator. Runs in every commit, once a message."""
    if not readings:
        return None
    at = readings[0].measured_at
    values: list[str] = []
    for r in readings:
        value = r.value
        if value is None or r.channel or r.unit is not None or r.extra or r.measured_at != at:
            return None
        number = float(value)
        if not isfinite(number) or (not number and copysign(1.0, number) < 0):
            return None  # -0.0: SQLite keeps it as 0, so the reading rows alone say what was kept
        values.append(repr(number))
    if len(values) == 1:
        quantities = readings[0].quantity
        if US in quantities:
            return None
    else:
        quantities = US.join([r.quantity for r in readings])
        if quantities.count(US) != len(values) - 1:
            return None  # a quantity holds the separator
    if RS in quantities:
        return None
    return f"{at!r}{RS}{quantities}{RS}{US.join(values)}"


def unpack(text: str) -> tuple[float, list[str], list[str]]:
    """The time, the quantities and the value texts of a packed text (same order)."""
    at, quantities, values = text.split(RS)
    return float(at), quantities.split(US), values.split(US)


def readings(text: str) -> tuple[Reading, ...]:
    """The readings of a packed text, as the reading rows hold them."""
    at, quantities, values = unpack(text)
    return tuple(Reading(q, float(v), at) for q, v in zip(quantities, values, strict=True))
