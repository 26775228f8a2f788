"""What the MQTT sink publishes, per preset: pure functions of journal entries."""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from fieldbridge.codecs.redis_stream import BATCH_META, batch_entries
from fieldbridge.model import JournalEntry
from fieldbridge.timefmt import iso

TOPIC_FIELDS = frozenset(
    {"device", "kind", "source", "token", "device_uuid", "device_type", "app_id", "app_name"}
)
HANDLER_META = ("_device_uuid", "_device_type", "_app_id", "_app_name")
# The Smart Citizen platform fails a reading whose recorded_at is more than a day after its
# clock ("Timestamp not within range", integrations.md §6.1), unseen by the sender.
SMARTCITIZEN_AHEAD_S = 86400.0


def topic_fields(template: str) -> set[str]:
    """The {placeholders} a topic template uses."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def render_topic(template: str, fields: Mapping[str, str]) -> str:
    return template.format_map(fields)


def stream_entry(entry: JournalEntry) -> tuple[str, dict[str, str]]:
    """The stream entry id and string fields of a message: as the Redis stream source
    journalled them, else made from the readings (id = the journal id, values as text)."""
    if "stream" in entry.meta and entry.payload:
        try:
            body = orjson.loads(entry.payload)
        except orjson.JSONDecodeError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("id"), str):
            fields = body.get("fields")
            if isinstance(fields, dict):
                return body["id"], {str(k): str(v) for k, v in fields.items()}
    return str(entry.id), {r.quantity: _text(r.value) for r in entry.readings}


def stream_entries(entry: JournalEntry) -> list[tuple[str, dict[str, str]]]:
    """Every stream entry of a message: those of a batch message (journal = "batch"), else
    its one entry (`stream_entry`)."""
    if BATCH_META in entry.meta:
        return batch_entries(entry.payload)
    return [stream_entry(entry)]


def handler_item(entry_id: str, fields: Mapping[str, str], identity: Mapping[str, str]) -> Any:
    """One object of the MQTT-Handler's values list: _id, the four identity keys, then every
    field as the string the producer wrote."""
    item: dict[str, str] = {
        "_id": entry_id,
        "_device_uuid": identity["device_uuid"],
        "_device_type": identity["device_type"],
        "_app_id": identity["app_id"],
        "_app_name": identity["app_name"],
    }
    for name, value in fields.items():
        if name not in item:
            item[name] = value
    return item


def handler_payload(items: Iterable[Any]) -> bytes:
    """The values message: a UTF-8 JSON list (orjson writes UTF-8, as json.dumps().encode())."""
    return orjson.dumps(list(items))


def json_payload(entry: JournalEntry) -> bytes:
    """The generic shape: {"id", "device", "kind", "source", "time", "readings": [...]}."""
    readings = [
        {
            "quantity": r.quantity,
            "value": r.value,
            "time": iso(r.measured_at),
            "channel": r.channel,
            "unit": r.unit,
        }
        for r in entry.readings
    ]
    at = entry.readings[0].measured_at if entry.readings else entry.received_at
    return orjson.dumps(
        {
            "id": entry.id,
            "device": entry.device,
            "kind": entry.kind,
            "source": entry.source,
            "time": iso(at),
            "readings": readings,
        }
    )


def smartcitizen_payload(
    entries: Sequence[JournalEntry], sensor_ids: Mapping[str, int | str]
) -> bytes | None:
    """{"data": [{"recorded_at", "sensors": [{"id", "value"}]}]} (integrations.md §6.1), one
    item per instant; readings without a sensor id or a value are left out. None: nothing to
    send."""
    data: list[dict[str, Any]] = []
    for entry in entries:
        by_time: dict[float, list[dict[str, Any]]] = {}
        for reading in entry.readings:
            sensor = sensor_ids.get(reading.quantity)
            if sensor is None or reading.value is None:
                continue
            by_time.setdefault(reading.measured_at, []).append(
                {"id": sensor, "value": reading.value}
            )
        data.extend({"recorded_at": iso(at), "sensors": sensors} for at, sensors in by_time.items())
    return orjson.dumps({"data": data}) if data else None


def smartcitizen_ahead(
    entry: JournalEntry, sensor_ids: Mapping[str, int | str], now: float
) -> str | None:
    """Why the platform would drop a reading of `entry` it is sent (a time more than a day
    after `now`), or None."""
    for reading in entry.readings:
        if reading.quantity not in sensor_ids or reading.value is None:
            continue  # not sent
        if reading.measured_at > now + SMARTCITIZEN_AHEAD_S:
            return (
                f"recorded_at {iso(reading.measured_at)} is more than 1 day ahead of now "
                f"({iso(int(now))}); the Smart Citizen platform drops such a reading unseen. "
                "Check the device's clock; `fieldbridge deadletters retry` sends it once the "
                "time has come"
            )
    return None


def _text(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if value.is_integer() else repr(value)
