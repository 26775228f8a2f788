"""ThingsBoard telemetry and attribute payloads of stored messages (spec integrations.md §3).

Pure: values in, bytes out. Each reading becomes a key of `values` at its measured time in
milliseconds: the quantity, with `_<channel>` appended for channels other than 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from fieldbridge.model import JournalEntry, Reading

Point = dict[str, Any]  # {"ts": <ms>, "values": {...}}


def key_of(reading: Reading) -> str:
    return reading.quantity if reading.channel == 0 else f"{reading.quantity}_{reading.channel}"


def value_of(reading: Reading) -> Any:
    """The number; for a reading without one (a text value, an event) its `extra` object."""
    if reading.value is not None:
        return reading.value
    return dict(reading.extra) if reading.extra else None


def points(entry: JournalEntry) -> list[Point]:
    """The message's readings grouped by measured time, in the order they first appear."""
    by_ts: dict[int, dict[str, Any]] = {}
    for reading in entry.readings:
        value = value_of(reading)
        if value is None:
            continue
        by_ts.setdefault(round(reading.measured_at * 1000), {})[key_of(reading)] = value
    return [{"ts": ts, "values": values} for ts, values in by_ts.items()]


def device_points(entries: Iterable[JournalEntry]) -> dict[str, list[Point]]:
    """Points per device, in journal order; devices whose messages carry nothing are left out."""
    out: dict[str, list[Point]] = {}
    for entry in entries:
        found = points(entry)
        if found:
            out.setdefault(entry.device, []).extend(found)
    return out


def gateway_telemetry(by_device: Mapping[str, Sequence[Point]]) -> bytes:
    """`v1/gateway/telemetry`: {"<device>": [{"ts": ms, "values": {...}}, ...], ...}."""
    return orjson.dumps({device: list(found) for device, found in by_device.items()})


def gateway_connect(device: str, kind: str | None) -> bytes:
    """`v1/gateway/connect`: the device (created on first sight), its profile as `type`."""
    body: dict[str, str] = {"device": device}
    if kind:
        body["type"] = kind
    return orjson.dumps(body)


def gateway_attributes(by_device: Mapping[str, Mapping[str, Any]]) -> bytes:
    """`v1/gateway/attributes`: {"<device>": {"attr": value, ...}, ...}."""
    return orjson.dumps({device: dict(values) for device, values in by_device.items()})


def device_telemetry(found: Sequence[Point]) -> bytes:
    """`v1/devices/me/telemetry` or HTTP `/telemetry`: [{"ts": ms, "values": {...}}, ...]."""
    return orjson.dumps(list(found))


def flat_attributes(values: Mapping[str, Any]) -> bytes:
    """`v1/devices/me/attributes` or HTTP `/attributes`: a flat JSON object."""
    return orjson.dumps(dict(values))


def sized(found: Sequence[Point], max_payload: int) -> list[list[Point]]:
    """Points in groups whose JSON stays within `max_payload` bytes (a larger point goes alone)."""
    out: list[list[Point]] = []
    current: list[Point] = []
    size = 2
    for point in found:
        grow = len(orjson.dumps(point)) + 1
        if current and size + grow > max_payload:
            out.append(current)
            current, size = [], 2
        current.append(point)
        size += grow
    if current:
        out.append(current)
    return out
