"""The compact non-JSON readings of `device/sck/<token>/readings/raw`: `{t:<time>,<id>:<value>}`.

The platform parses this with a small Treetop grammar (smartcitizen-api
app/grammars/raw_message.tt); one regular expression applied pair by pair expresses the same
grammar here, so a parser library would add a dependency for nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fieldbridge.errors import DecodeError

# One pair and what may follow it, as the grammar has it: `t:<ISO time>` or `<id>:<value>`,
# then spaces, an optional comma, spaces. An id and a value are runs of digits and `-` (so a
# value may pack several figures, `0-0-12-500-88-0`), a value may have a fraction, or be null.
_PAIR = re.compile(
    r"(?:t *: *(?P<t>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z)"
    r"|(?P<id>[-0-9]+) *: *(?P<value>null|[-0-9]+(?:\.[-0-9]+)?)) *,? *",
    re.ASCII,
)
_BODY = re.compile(r"\s*\{ *(?P<body>.*?) *\}\s*", re.DOTALL)
SHOWN = 40  # characters of an unparsable part quoted in a reason


@dataclass(frozen=True, slots=True)
class RawReading:
    """What one raw message holds: its time text (None when absent) and (id, value) pairs;
    pairs whose value is `null` are left out, as the platform leaves them out."""

    recorded_at: str | None
    sensors: tuple[tuple[str, str], ...]


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
    sensors: list[tuple[str, str]] = []
    at, end = 0, len(body)
    while at < end:
        pair = _PAIR.match(body, at)
        if pair is None or pair.end() == at:
            raise DecodeError(
                f"raw readings: {_quote(body[at:])} is neither t:<YYYY-MM-DDTHH:MM:SSZ> nor "
                "<sensor id>:<value>",
                malformed=True,
            )
        at = pair.end()
        if pair.group("t") is not None:
            recorded_at = pair.group("t")
        elif pair.group("value") != "null":
            sensors.append((pair.group("id"), pair.group("value")))
    return RawReading(recorded_at, tuple(sensors))


def _quote(text: str) -> str:
    shown = text.strip()
    return repr(shown if len(shown) <= SHOWN else shown[:SHOWN] + "...")
