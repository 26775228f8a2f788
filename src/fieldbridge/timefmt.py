"""Time as fieldbridge shows it: ISO 8601 in UTC with a Z."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(ts: float) -> str:
    """Unix seconds -> '2026-11-23T08:30:00.123456Z' (microseconds only when present)."""
    moment = datetime.fromtimestamp(ts, UTC)
    text = moment.isoformat(timespec="microseconds" if moment.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def parse_iso(text: str) -> float:
    """ISO 8601 -> Unix seconds; a time without zone is taken as UTC. ValueError if bad."""
    moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
