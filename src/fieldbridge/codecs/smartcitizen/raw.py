"""The compact non-JSON readings of `device/sck/<token>/readings/raw`: `{t:<time>,<id>:<value>}`.

The platform parses this with a small Treetop grammar (smartcitizen-api
app/grammars/raw_message.tt); two regular expressions express the same grammar here, so a parser
library would add a dependency for nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fieldbridge.errors import DecodeError

# One pair: `t:2024-09-25T13:19:38Z` or `<id>:<number>`; spaces around both sides are allowed.
_PAIR = re.compile(
    r"(?a)\s*(?:t\s*:\s*(?P<t>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z)"
    r"|(?P<id>\d{1,9})\s*:\s*(?P<value>-?\d+(?:\.\d+)?))\s*"
)
_BODY = re.compile(r"\s*\{(?P<body>.*)\}\s*", re.DOTALL)
SHOWN = 40  # characters of an unparsable part quoted in a reason


@dataclass(frozen=True, slots=True)
class RawReading:
    """What one raw message holds: its time text (None when absent) and (id, value) pairs."""

    recorded_at: str | None
    sensors: tuple[tuple[int, str], ...]


def parse_raw(text: str) -> RawReading:
    """Parse the raw grammar; a DecodeError (malformed) says where it stopped making sense."""
    outer = _BODY.fullmatch(text)
    if outer is None:
        raise DecodeError(
            f"raw readings must look like {{t:2024-09-25T13:19:38Z,1:21,13:66}}, got "
            f"{_quote(text)}",
            malformed=True,
        )
    body = outer.group("body")
    recorded_at: str | None = None
    sensors: list[tuple[int, str]] = []
    parts = body.split(",") if body.strip() else []
    if len(parts) > 1 and not parts[-1].strip():
        parts.pop()  # the grammar allows a comma after the last pair
    for part in parts:
        pair = _PAIR.fullmatch(part)
        if pair is None:
            raise DecodeError(
                f"raw readings: {_quote(part)} is neither t:<YYYY-MM-DDTHH:MM:SSZ> nor "
                "<sensor id>:<number>",
                malformed=True,
            )
        if pair.group("t") is not None:
            recorded_at = pair.group("t")
        else:
            sensors.append((int(pair.group("id")), pair.group("value")))
    return RawReading(recorded_at, tuple(sensors))


def _quote(text: str) -> str:
    shown = text.strip()
    return repr(shown if len(shown) <= SHOWN else shown[:SHOWN] + "...")
