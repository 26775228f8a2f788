"""Cursors: where the next page starts, handed to the client as opaque text."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson

from fieldbridge.web.api.errors import ApiError


def encode_cursor(kind: str, position: Any) -> str:
    """An opaque cursor for a page of `kind` continuing after `position`."""
    raw = orjson.dumps({"k": kind, "p": position})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None, kind: str) -> Any:
    """The position a cursor of `kind` holds; None for no cursor; ApiError 400 if it is not
    one this API handed out for that listing."""
    if cursor is None or cursor == "":
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = orjson.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, UnicodeEncodeError, binascii.Error, orjson.JSONDecodeError):
        data = None
    if not isinstance(data, dict) or data.get("k") != kind or "p" not in data:
        raise ApiError(
            400,
            "invalid_cursor",
            "cursor: not a cursor of this listing; pass next_cursor of the previous page as is",
        )
    return data["p"]


def int_position(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, "invalid_cursor", "cursor: not a cursor of this listing")
    return value


def str_position(value: Any) -> str:
    if not isinstance(value, str):
        raise ApiError(400, "invalid_cursor", "cursor: not a cursor of this listing")
    return value
