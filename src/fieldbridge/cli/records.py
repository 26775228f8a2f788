"""The JSON shapes the CLI prints for stored records."""

from __future__ import annotations

import base64
from typing import Any

from fieldbridge.model import (
    DeadLetter,
    Device,
    DeviceLink,
    MessageType,
    QuarantineEntry,
    Role,
    StoredReading,
)
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
        "role": d.role,
        "status": d.status,
        "status_since": iso(d.status_since) if d.status_since is not None else None,
        "allowed_downtime_min": d.allowed_downtime_min,
        "message_type": d.message_type,
        "team": d.team,
        "location": location_json(d),
    }


def location_json(d: Device) -> dict[str, Any] | None:
    """Where a device is: the manual override (`devices set --location`) over what it reports."""
    override = d.attributes.get("location_override")
    if isinstance(override, dict):
        return {**override, "source": "override"}
    lat, lon = d.attributes.get("latitude"), d.attributes.get("longitude")
    if lat is None and lon is None:
        return None
    return {"latitude": lat, "longitude": lon, "source": "reported"}


def links_json(links: list[DeviceLink]) -> dict[str, list[dict[str, Any]]]:
    """A device's relays as `devices show` prints them: gateways and repeaters, latest first."""
    return {
        "gateways": [
            {"gateway": link.via, "last_seen": iso(link.last_seen)}
            for link in links
            if link.role is Role.GATEWAY
        ],
        "repeaters": [
            {"repeater": link.via, "last_seen": iso(link.last_seen)}
            for link in links
            if link.role is Role.REPEATER
        ],
    }


def message_type_json(m: MessageType) -> dict[str, Any]:
    return {
        "name": m.name,
        "description": m.description,
        "fields": [
            None
            if spec is None
            else {"name": spec.name, "type": spec.type.value, "is_tag": spec.is_tag}
            for spec in m.fields
        ],
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
