"""Names a CSV line's values through a message type: readings, text attributes and tags."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fieldbridge.codecs.numbers import finite_number
from fieldbridge.codecs.trapnet.attributes import MAX_TEXT, registry_attributes
from fieldbridge.model import FieldType, MessageType, Reading


def name_fields(
    fields: Sequence[str], message_type: MessageType, at: float, battery_key: str = "VBat"
) -> tuple[tuple[Reading, ...], dict[str, Any]]:
    """Readings (I and F values, as float) and device attributes (S values, and the registry
    attributes the names imply) of one CSV line. Tag values go into every reading's
    extra["tags"]. A value that does not parse is kept as a reading without a value and its
    text in extra["raw"]; positions past the line's end are left out."""
    tags: dict[str, str] = {}
    numeric: list[tuple[str, str]] = []
    named: dict[str, object] = {}
    attributes: dict[str, Any] = {}
    for spec, raw in zip(message_type.fields, fields, strict=False):
        if spec is None:
            continue
        text = raw.strip()[:MAX_TEXT].replace("\x00", "")
        named[spec.name] = text
        if spec.is_tag:
            tags[spec.name] = text
        elif spec.type is FieldType.TEXT:
            attributes[spec.name] = text
        else:
            numeric.append((spec.name, text))
    readings = []
    for name, text in numeric:
        number = finite_number(text)
        extra: dict[str, Any] = {}
        if tags:
            extra["tags"] = tags
        if number is None:
            extra["raw"] = text
        readings.append(Reading(name, number, at, extra=extra or None))
    attributes.update(registry_attributes(named, battery_key))
    return tuple(readings), attributes
