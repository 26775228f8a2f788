"""The JSON messages of the trap network: an object, its readings and its sender's id."""

from __future__ import annotations

import math
from typing import Any

from fieldbridge.codecs import strict_json
from fieldbridge.codecs.trapnet.attributes import MAX_TEXT
from fieldbridge.errors import DecodeError
from fieldbridge.model import Reading

MAX_READINGS = 1000


def load_object(payload: bytes, what: str) -> dict[str, Any]:
    """The payload as a JSON object, or a DecodeError naming the topic family."""
    data = strict_json.loads(payload, f"{what} payload")
    if type(data) is not dict:
        raise DecodeError(f"{what}: the payload must be a JSON object")
    return data


def readings_of(data: dict[str, Any], at: float, skip: frozenset[str]) -> tuple[Reading, ...]:
    """Every top-level number (not booleans, not text) as a reading named by its key."""
    out: list[Reading] = []
    for key, value in data.items():
        if key in skip or (type(value) is not int and type(value) is not float):
            continue
        if "\x00" in key:
            raise DecodeError(f"{key[:40]!r}: a value's name must not contain NUL characters")
        if not key or len(key) > MAX_TEXT:
            raise DecodeError(f"{key[:40]!r}: a value's name must be 1 to {MAX_TEXT} characters")
        try:
            number = float(value)
        except OverflowError:
            continue
        if math.isfinite(number):
            out.append(Reading(key, number, at))
        if len(out) > MAX_READINGS:
            raise DecodeError(f"more than {MAX_READINGS} numbers in one message")
    return tuple(out)


def excerpt(payload: bytes) -> str:
    """The payload as text for the last_data / last_status attributes (first 1000 chars)."""
    return payload[:4000].decode("utf-8", "replace")[:1000].replace("\x00", "\\x00")
