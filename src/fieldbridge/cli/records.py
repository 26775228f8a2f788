"""The JSON shapes the CLI prints for stored records."""

from __future__ import annotations

import base64
from typing import Any

from fieldbridge.model import DeadLetter, Device, QuarantineEntry, StoredReading
from fieldbridge.reading_json import reading_json
from fieldbridge.timefmt import iso


def device_json(d: Device) -> dict[str, Any]:
    return {
        "id": d.id,
        "kind": d.kind,
        "name": d.name,
        "source": d.source,
        "first_seen": iso(d.first_seen),
        "last_seen": iso(d.last_seen),
        "message_count": d.message_count,
        "attributes": dict(d.attributes),
        "flags": dict(d.flags),
    }


def stored_reading_json(r: StoredReading) -> dict[str, Any]:
    return {"device": r.device, **reading_json(r.reading), "message_id": r.message_id}


def quarantine_json(q: QuarantineEntry) -> dict[str, Any]:
    try:
        text: str | None = q.payload.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {
        "id": q.id,
        "received_at": iso(q.received_at),
        "source": q.source,
        "reason": q.reason,
        "meta": dict(q.meta),
        "payload_text": text,
        "payload_b64": base64.b64encode(q.payload).decode(),
    }


def dead_letter_json(d: DeadLetter) -> dict[str, Any]:
    return {
        "id": d.id,
        "sink": d.sink,
        "message_id": d.message_id,
        "attempts": d.attempts,
        "status": d.status,
        "body": d.body,
        "created_at": iso(d.created_at),
        "state": d.state,
    }
