"""Redis stream entries (as the Redis stream source journals them) to messages.

The source hands over a batch of entries as one payload, one JSON line per entry (so a batch
is committed in one transaction, in stream order); each line becomes one message, whose stored
payload is that line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
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


def entry_order(entry_id: str) -> tuple[int, int] | None:
    """(milliseconds, sequence) of an entry id "<ms>-<seq>", to compare two; None if it is
    not one."""
    millis, dash, seq = entry_id.partition("-")
    if not (millis.isdigit() and dash and seq.isdigit()):
        return None
    return int(millis), int(seq)


def entry_millis(entry_id: str) -> int:
    """The Unix milliseconds of an entry id "<ms>-<seq>"; DecodeError for anything else."""
    order = entry_order(entry_id)
    if order is None:
        raise DecodeError(f"stream entry id {entry_id!r} is not <milliseconds>-<sequence>")
    return order[0]


def entry_readings(entry_id: str, fields: Mapping[str, object]) -> tuple[Reading, ...]:
    """An entry's numeric fields as readings (quantity = field name) at its id's time."""
    at = entry_millis(entry_id) / 1000.0
    readings = []
    for name, text in fields.items():
        value = number(text) if isinstance(text, str) else None
        if value is not None:
            readings.append(Reading(str(name), value, at))
    return tuple(readings)


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
        return Decoded(
            self.device,
            entry_readings(entry_id, fields),
            kind=self.kind,
            idempotency_key=entry_id,
            raw=line,
        )


BATCH_META = "batch"  # meta key (true) of a batch message: it holds several stream entries

Entry = tuple[str, dict[str, str]]  # (entry id, fields) as XREAD gives them


def batch_document(entries: Sequence[Entry]) -> bytes:
    """The payload of a batch (journal = "batch"): one JSON list of [id, fields], oldest
    first, written in one call."""
    return orjson.dumps(entries)


def batch_entries(payload: bytes) -> list[Entry]:
    """The entries of a batch payload; DecodeError if it is not one."""
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not a journalled stream batch: {exc}", malformed=True) from None
    if not isinstance(document, list) or not document:
        raise DecodeError("not a journalled stream batch: expected a non-empty JSON list")
    for item in document:
        if not (
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], dict)
        ):
            raise DecodeError("not a journalled stream batch: items are [entry id, fields]")
    first, last = entry_order(document[0][0]), entry_order(document[-1][0])
    if first is None or last is None:
        bad = document[0][0] if first is None else document[-1][0]
        raise DecodeError(f"stream entry id {bad!r} is not <milliseconds>-<sequence>")
    if first > last:
        raise DecodeError("not a journalled stream batch: entry ids out of order")
    return [(entry_id, fields) for entry_id, fields in document]


@dataclass(frozen=True, slots=True)
class StreamBatchCodec:
    """Stream entries → one message per `per_message` of them (`journal = "batch"`): the
    journal keeps the entries as read, a row per batch and no reading rows, which is what lets
    an edge device forward a backlog at the rate Redis and the broker allow. A message's
    idempotency key is its last entry id. Sinks that send readings get them from the payload
    (`batch_readings`).
    """

    device: str
    kind: str | None = None
    per_message: int = 500

    def __call__(
        self, payload: bytes, meta: Mapping[str, Any], received_at: float
    ) -> Sequence[Decoded | Refusal]:
        entries = batch_entries(payload)
        if len(entries) <= self.per_message:
            return [Decoded(self.device, (), kind=self.kind, idempotency_key=entries[-1][0])]
        out: list[Decoded | Refusal] = []
        for n in range(0, len(entries), self.per_message):
            part = entries[n : n + self.per_message]
            out.append(
                Decoded(
                    self.device,
                    (),
                    kind=self.kind,
                    idempotency_key=part[-1][0],
                    raw=batch_document(part),
                )
            )
        return out


def batch_readings(payload: bytes) -> tuple[Reading, ...]:
    """The readings of a batch message: every numeric field of every entry, measured at its
    entry id's time (as StreamEntryCodec makes them for one entry)."""
    return tuple(chain.from_iterable(entry_readings(i, f) for i, f in batch_entries(payload)))
