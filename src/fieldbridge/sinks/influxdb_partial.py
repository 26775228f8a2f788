"""Which lines an InfluxDB partial write refused (spec integrations.md §4.1, §4.2).

InfluxDB keeps the good points of a request and names the refused ones only in its error text
(`partial write: <reason> dropped=<n>`): `unable to parse '<line>': <reason>` quotes the line
(1.x does not count those in `dropped`); a field type conflict names the measurement, the field
and the type it was given (only the first conflict is named; `dropped` counts them all). Any
other refusal (points beyond the retention policy, ...) names no line: then None, and the
caller falls back to bisection, which re-writes good points harmlessly (same series and time
overwrite).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from fieldbridge.sinks.influxdb_lines import Line

_PARSE = re.compile(r"unable to parse '(.*?)': ([^\n]*?)(?= dropped=\d+|\n|$)", re.S)
_CONFLICT = re.compile(
    r'field type conflict: input field "(?P<field>.*?)" on measurement '
    r'"(?P<measurement>.*?)" is type (?P<type>\w+)(?:, already exists as type \w+)?',
    re.S,
)
_DROPPED = re.compile(r"dropped=(\d+)")


def field_type(rendered: str) -> str:
    """InfluxDB's name for the type of a rendered field value."""
    if rendered.startswith('"'):
        return "string"
    if rendered in ("true", "false"):
        return "boolean"
    return "float"


def _unescape(name: str) -> str:
    return name.replace("\\,", ",").replace("\\ ", " ").replace("\\=", "=")


def rejected_lines(message: str, lines: Sequence[Line]) -> dict[int, str] | None:
    """Journal id -> reason for every refused line of a partial write; None when the refusal
    cannot be matched to lines exactly (a quoted line that is not one of ours, or fewer
    conflicting lines found than InfluxDB's `dropped=`)."""
    dropped = _DROPPED.search(message)
    out: dict[int, str] = {}
    unparsed = 0
    by_text = {line.text: line for line in lines}
    for text, reason in _PARSE.findall(message):
        line = by_text.get(text)
        if line is None:
            return None
        out[line.entry_id] = f"unable to parse line: {reason}"
        unparsed += 1
    conflicts = 0
    for match in _CONFLICT.finditer(message):
        measurement, field, kind = match["measurement"], match["field"], match["type"]
        reason = match.group(0)
        for line in lines:
            if _unescape(line.measurement) != measurement:
                continue
            for key, value in line.fields.items():
                if _unescape(key) == field and field_type(value) == kind:
                    out[line.entry_id] = reason
                    conflicts += 1
                    break
    if not out:
        return None
    if dropped is not None and int(dropped.group(1)) not in (conflicts, conflicts + unparsed):
        return None  # more refused than named (another reason, or a second conflict)
    return out
