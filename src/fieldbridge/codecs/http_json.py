"""The generic JSON of POST /api/v1/ingest: one object or an array of objects."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from fieldbridge.codecs import strict_json
from fieldbridge.errors import DecodeError
from fieldbridge.model import Decoded, Reading, check_device_id
from fieldbridge.printable import escape

FIELDS = ("device", "kind", "ts", "readings", "id")
READING_FIELDS = ("value", "unit", "channel")
ALLOWED = frozenset(FIELDS)
MAX_TEXT = 256
MAX_EPOCH = 253402300800  # year 10000
# PostgreSQL text cannot hold NUL: one stored string with it would fail its whole ingest batch.
NO_NUL = "must not contain NUL characters"


def decode(payload: bytes, meta: Mapping[str, Any], received_at: float) -> list[Decoded]:
    data = strict_json.loads(payload, "body")
    if isinstance(data, dict):
        return [_message(data, "", received_at, None)]
    if isinstance(data, list):
        if not data:
            raise DecodeError("the array is empty; send at least one message")
        return [
            _message(item, f"[{index}]", received_at, orjson.dumps(item))
            for index, item in enumerate(data)
        ]
    raise DecodeError("body must be a JSON object or an array of objects")


def _message(item: object, where: str, received_at: float, raw: bytes | None) -> Decoded:
    if not isinstance(item, dict):
        raise DecodeError(f"{where or 'body'}: must be an object, got {_type(item)}")
    if not ALLOWED.issuperset(item):
        unknown = _safe(sorted(set(item) - ALLOWED)[0])
        raise DecodeError(f"{_at(where, unknown)}: unknown field (allowed: {', '.join(FIELDS)})")
    device = item.get("device")
    if (
        type(device) is not str
        or not 0 < len(device) <= MAX_TEXT
        or device.isspace()
        or not device.isprintable()
    ):
        device = _text(device, _at(where, "device"), required=True)
        assert device is not None
        check_device_id(device, _at(where, "device"))
    kind = item.get("kind")
    if kind is not None:
        kind = _text(kind, _at(where, "kind"), required=False)
    ts = item.get("ts")
    if (type(ts) is int or type(ts) is float) and 0 <= ts < MAX_EPOCH:  # NaN and inf fail
        ts = float(ts)
    else:
        ts = received_at if ts is None else _timestamp(ts, _at(where, "ts"), received_at)
    readings = _readings(item.get("readings"), where, ts)
    key = item.get("id")
    if key is not None and type(key) is not str:
        if type(key) is not int:
            raise DecodeError(f"{_at(where, 'id')}: must be a string or an integer")
        key = str(key)
    elif key is not None and not 0 < len(key) <= MAX_TEXT:
        raise DecodeError(f"{_at(where, 'id')}: must be 1 to {MAX_TEXT} characters")
    elif key is not None and "\x00" in key:
        raise DecodeError(f"{_at(where, 'id')}: {NO_NUL}")
    # Positional: keyword arguments cost about 0.15 µs more a message.
    return Decoded(device, readings, kind, key, None, raw)


def _readings(value: object, where: str, ts: float) -> tuple[Reading, ...]:
    if type(value) is not dict or not value:
        raise DecodeError(
            f"{_at(where, 'readings')}: must be a non-empty object of quantity: value"
        )
    out = []
    for quantity, spec in value.items():
        kind = type(spec)
        if (
            (kind is float or kind is int)
            and 0 < len(quantity) <= MAX_TEXT
            and "\x00" not in quantity
        ):
            out.append(Reading(quantity, float(spec), ts))
        else:
            out.append(_reading(quantity, spec, _at(where, "readings"), ts))
    return tuple(out)


def _reading(quantity: str, spec: object, where: str, ts: float) -> Reading:
    if not quantity or len(quantity) > MAX_TEXT:
        raise DecodeError(f"{where}: quantity names must be 1 to {MAX_TEXT} characters")
    if "\x00" in quantity:
        raise DecodeError(f"{where}: quantity names {NO_NUL}")
    here = f"{where}.{_safe(quantity)}"
    unit: str | None = None
    channel = 0
    if isinstance(spec, dict):
        unknown = sorted(set(spec) - set(READING_FIELDS))
        if unknown:
            raise DecodeError(
                f"{here}.{_safe(unknown[0])}: unknown field (allowed: {', '.join(READING_FIELDS)})"
            )
        unit = _text(spec.get("unit"), f"{here}.unit", required=False)
        raw_channel = spec.get("channel", 0)
        if isinstance(raw_channel, bool) or not isinstance(raw_channel, int):
            raise DecodeError(f"{here}.channel: must be an integer")
        if not 0 <= raw_channel <= 65535:
            raise DecodeError(f"{here}.channel: must be 0 to 65535")
        channel = raw_channel
        if "value" not in spec:
            raise DecodeError(f"{here}.value: required")
        spec = spec["value"]
    return Reading(quantity, _number(spec, here), ts, channel, unit)


def _number(value: object, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        number = float(value)
        if math.isfinite(number):
            return number
        raise DecodeError(f"{where}: must be a finite number")
    raise DecodeError(f"{where}: must be a number, a boolean or null, got {_type(value)}")


def _timestamp(value: object, where: str, received_at: float) -> float:
    if value is None:
        return received_at
    if isinstance(value, bool):
        raise DecodeError(f"{where}: must be ISO 8601 text or epoch seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise DecodeError(f"{where}: {value[:40]!r} is not ISO 8601") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = moment.timestamp()
    else:
        raise DecodeError(f"{where}: must be ISO 8601 text or epoch seconds")
    if not (math.isfinite(seconds) and 0 <= seconds < MAX_EPOCH):
        raise DecodeError(f"{where}: {value!r} is out of range")
    return seconds


def _text(value: object, where: str, *, required: bool) -> str | None:
    if value is None:
        if required:
            raise DecodeError(f"{where}: required")
        return None
    if not isinstance(value, str) or not value.strip():
        raise DecodeError(f"{where}: must be a non-empty string")
    if len(value) > MAX_TEXT:
        raise DecodeError(f"{where}: longer than {MAX_TEXT} characters")
    if "\x00" in value:
        raise DecodeError(f"{where}: {NO_NUL}")
    return value


def _safe(name: str) -> str:
    """A field name fit for a reason: quarantine keeps reasons as text, which cannot hold NUL,
    and terminals show them, so NUL and every other unprintable character is escaped."""
    return escape(name)


def _at(where: str, field: str) -> str:
    return f"{where}.{field}" if where else field


def _type(value: object) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), "number" if isinstance(value, int | float) else "null"
    )
