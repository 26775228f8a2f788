"""The relayed network at commit: CSV values named by message types, relays and their links."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from fieldbridge.codecs.trapnet import name_fields
from fieldbridge.model import Decoded, FieldType, MessageField, MessageType, Role
from fieldbridge.store.db import ExecuteMany, Fetch, Plan

if TYPE_CHECKING:
    from fieldbridge.store.journal import Pending

IN_CHUNK = 500

# The registry keeps the highest role a device was seen in: node < repeater < gateway.
ROLE_MERGE = (
    "CASE WHEN excluded.role IS NULL THEN devices.role "
    "WHEN devices.role IS NULL THEN excluded.role "
    "WHEN 'gateway' IN (devices.role, excluded.role) THEN 'gateway' "
    "WHEN 'repeater' IN (devices.role, excluded.role) THEN 'repeater' "
    "ELSE devices.role END"
)
RANK = {Role.NODE: 0, Role.REPEATER: 1, Role.GATEWAY: 2}


def higher_role(a: Role | None, b: Role | None) -> Role | None:
    if a is None or b is None:
        return a or b
    return a if RANK[a] >= RANK[b] else b


def message_types_of(devices: Sequence[str]) -> Plan[dict[str, MessageType]]:
    """The message type of each of these devices that has one, read in this transaction."""
    found: dict[str, list[tuple[int, MessageField | None]]] = {}
    names: dict[str, str] = {}
    for i in range(0, len(devices), IN_CHUNK):
        chunk = list(devices[i : i + IN_CHUNK])
        marks = ",".join("?" * len(chunk))
        rows = yield Fetch(
            "SELECT d.id, d.message_type, f.position, f.name, f.type, f.is_tag FROM devices d "
            "JOIN message_type_fields f ON f.message_type = d.message_type "
            f"WHERE d.id IN ({marks}) ORDER BY d.id, f.position",
            chunk,
        )
        for dev, mtype, position, name, ftype, is_tag in rows or ():
            names[dev] = mtype
            spec = None if name is None else MessageField(name, FieldType(ftype), bool(is_tag))
            found.setdefault(dev, []).append((int(position), spec))
    out: dict[str, MessageType] = {}
    for dev, specs in found.items():
        width = max(p for p, _ in specs) + 1
        fields: list[MessageField | None] = [None] * width
        for position, spec in specs:
            fields[position] = spec
        out[dev] = MessageType(names[dev], tuple(fields))
    return out


def name_csv_values(batch: Sequence[Pending]) -> Plan[list[Pending]]:
    """The batch with every CSV message's values named by its device's message type, as the
    registry has it now (an edit applies from the next commit on). A device without one keeps
    its message with no readings; the line stays in the journal and in last_data."""
    wanted = sorted(
        {
            d.device
            for p in batch
            for d in p.decoded or ()
            if d.report is not None and d.report.fields is not None
        }
    )
    types = yield from message_types_of(wanted)
    out: list[Pending] = []
    for p in batch:
        if not p.decoded or not any(d.report and d.report.fields is not None for d in p.decoded):
            out.append(p)
            continue
        out.append(replace(p, decoded=[_named(d, types, p.received_at) for d in p.decoded]))
    return out


def _named(d: Decoded, types: dict[str, MessageType], at: float) -> Decoded:
    report = d.report
    if report is None or report.fields is None:
        return d
    mtype = types.get(d.device)
    if mtype is None:
        return d
    readings, attributes = name_fields(report.fields, mtype, at, report.battery_key)
    return replace(
        d,
        readings=(*d.readings, *readings),
        attributes={**(d.attributes or {}), **attributes, "message_type": mtype.name},
    )


@dataclass(slots=True)
class Relays:
    """The gateways and repeaters a batch shows alive, and the links to what they carried."""

    # id -> (role, first seen, last seen, source)
    seen: dict[str, tuple[Role, float, float, str]] = field(default_factory=dict)
    links: dict[tuple[str, str], tuple[Role, float]] = field(default_factory=dict)

    def note(self, d: Decoded, received_at: float, source: str) -> None:
        if d.report is None:
            return
        for relay in d.report.relays:
            if relay.device == d.device:
                continue
            old = self.seen.get(relay.device)
            role = relay.role if old is None else higher_role(old[0], relay.role) or relay.role
            first = old[1] if old else received_at
            self.seen[relay.device] = (role, first, received_at, source)
            self.links[(d.device, relay.device)] = (relay.role, received_at)


def apply_relays(relays: Relays) -> Plan[None]:
    """Create or refresh the relays (last_seen, role) and their node_gateways links."""
    if relays.seen:
        yield ExecuteMany(
            "INSERT INTO devices (id, kind, source, first_seen, last_seen, message_count, role) "
            "VALUES (?, 'trapnet', ?, ?, ?, 0, ?) ON CONFLICT (id) DO UPDATE SET "
            "last_seen = CASE WHEN excluded.last_seen > devices.last_seen "
            "THEN excluded.last_seen ELSE devices.last_seen END, "
            f"role = {ROLE_MERGE}",
            [
                (dev, source, first, last, role.value)
                for dev, (role, first, last, source) in sorted(relays.seen.items())
            ],
        )
    if relays.links:
        yield ExecuteMany(
            "INSERT INTO node_gateways (node, via, role, last_seen) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (node, via) DO UPDATE SET role = excluded.role, "
            "last_seen = CASE WHEN excluded.last_seen > node_gateways.last_seen "
            "THEN excluded.last_seen ELSE node_gateways.last_seen END",
            [
                (node, via, role.value, at)
                for (node, via), (role, at) in sorted(relays.links.items())
            ],
        )
