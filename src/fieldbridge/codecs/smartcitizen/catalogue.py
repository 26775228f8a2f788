"""The Smart Citizen sensor catalogue: sensor id -> quantity name and unit, shipped as data."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources


@dataclass(frozen=True, slots=True)
class Sensor:
    """One entry of the catalogue."""

    name: str  # the stored quantity, e.g. "temperature"
    unit: str | None
    title: str = ""


@cache
def builtin() -> Mapping[int, Sensor]:
    """The catalogue shipped in sensors.json (read once per process)."""
    text = resources.files(__package__).joinpath("sensors.json").read_text(encoding="utf-8")
    entries = json.loads(text)["sensors"]
    return {
        int(sid): Sensor(entry["name"], entry.get("unit"), entry.get("title", ""))
        for sid, entry in entries.items()
    }
