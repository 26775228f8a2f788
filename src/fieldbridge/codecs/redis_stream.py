"""Redis stream entries (as the Redis stream source journals them) to messages.

The source hands over a batch of entries as one payload, one JSON line per entry (so a batch
is committed in one transaction, in stream order); each line becomes one message, whose stored
payload is that line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from fieldbridge.errors import DecodeError
from fieldbridge.model import Decoded, Reading, Refusal


def entry_payload(entry_id: str, fields: Mapping[str, str]) -> bytes:
    """The journal payload of one entry: its id and its fields, strings as Redis holds them
    (in stream order), so a sink can send them on exactly as the producer wrote them."""
    return orjson.dumps({"id": entry_id, "fields": fields})


def batch_payload(lines: Sequence[bytes]) -> bytes:
    """The payload of a batch of entries (each from `entry_payload`), oldest first. A JSON
    line holds no raw newline: orjson escapes one inside a string."""
    return b"\n".join(lines)


def entry_millis(entry_id: str) -> int:
    """The Unix milliseconds of an entry id "<ms>-<seq>"; DecodeError for anything else."""
    millis, dash, seq = entry_id.partition("-")
    if not (millis.isdigit() and dash and seq.isdigit()):
        raise DecodeError(f"stream entry id {entry_id!r} is not <milliseconds>-<sequence>")
    return int(millis)


def number(text: str) -> float | None:
    """A field's value as a finite number, or None when it is not one ("on", "", "nan")."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


@dataclass(frozen=True, slots=True)
class StreamEntryCodec:
    """One entry → one message of the configured device, measured at the entry id's time.

    Numeric fields become readings (quantity = field name); other fields stay in the raw
    payload only. The entry id is the idempotency key: an entry read twice (after a restart
    between commit and cursor save) is stored once.
    """

    device: str
    kind: str | None = None

    def __call__(
        self, payload: bytes, meta: Mapping[str, Any], received_at: float
    ) -> Sequence[Decoded | Refusal]:
        out: list[Decoded | Refusal] = []
        for line in payload.split(b"\n"):
            try:
                out.append(self._entry(line))
            except DecodeError as exc:
                out.append(Refusal(exc.reason, raw=line, cause=exc.cause))
        if not any(isinstance(part, Decoded) for part in out):
            reasons = [p.reason for p in out if isinstance(p, Refusal)]
            raise DecodeError("; ".join(reasons[:3]), malformed=len(out) == 1)
        return out

    def _entry(self, line: bytes) -> Decoded:
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(f"not a journalled stream entry: {exc}", malformed=True) from None
        if not isinstance(entry, dict):
            raise DecodeError("not a journalled stream entry: expected a JSON object")
        entry_id, fields = entry.get("id"), entry.get("fields")
        if not isinstance(entry_id, str) or not isinstance(fields, dict):
            raise DecodeError("not a journalled stream entry: needs 'id' and 'fields'")
        at = entry_millis(entry_id) / 1000.0
        readings = []
        for name, text in fields.items():
            value = number(text) if isinstance(text, str) else None
            if value is not None:
                readings.append(Reading(str(name), value, at))
        return Decoded(
            self.device, tuple(readings), kind=self.kind, idempotency_key=entry_id, raw=line
        )
