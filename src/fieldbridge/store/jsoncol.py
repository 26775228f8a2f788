"""JSON text columns: how mappings are written to and read from the store."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson


def dump(value: Mapping[str, Any] | None) -> str:
    return orjson.dumps(value or {}, default=str).decode()


def dump_or_none(value: Mapping[str, Any] | None) -> str | None:
    return None if not value else orjson.dumps(value, default=str).decode()


def load(text: str | bytes | None) -> dict[str, Any]:
    if not text:
        return {}
    value = orjson.loads(text)
    return value if isinstance(value, dict) else {}
