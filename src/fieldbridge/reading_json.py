"""The JSON form of a Reading: one shape for the webhook body, the spy stream and the CLI."""

from __future__ import annotations

from typing import Any

from fieldbridge.model import Reading
from fieldbridge.timefmt import iso


def reading_json(reading: Reading) -> dict[str, Any]:
    """`reading` as JSON-ready data; the time as ISO 8601 UTC, `extra` null when empty."""
    return {
        "quantity": reading.quantity,
        "value": reading.value,
        "unit": reading.unit,
        "channel": reading.channel,
        "measured_at": iso(reading.measured_at),
        "extra": dict(reading.extra) if reading.extra else None,
    }
