"""Device registry and readings queries."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fieldbridge.model import (
    Device,
    DeviceLink,
    DeviceStatus,
    QuarantineEntry,
    Reading,
    Role,
    StoredReading,
)
from fieldbridge.store import jsoncol
from fieldbridge.store.db import Database, Row

DEVICE_COLUMNS = (
    "id, kind, name, source, first_seen, last_seen, message_count, attributes, flags, "
    "role, status, status_since, allowed_downtime_min, message_type, team"
)
UNSET: object = object()  # update_device: leave the column as it is
READING_COLUMNS = (
    "message_id, device, quantity, value, measured_at, channel, unit, extra, reading_key, seq"
)


@dataclass(frozen=True, slots=True)
class ReadingKey:
    """Where a page of readings ends: the order readings_page walks them in."""

    measured_at: float
    message_id: int
    seq: int


def _like(text: str) -> str:
    """A LIKE pattern matching `text` anywhere, its own % and _ taken literally."""
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


# What a search text may match: the column, NULL read as "" (a device without a name).
_SEARCHED = {
    "id": "id",
    "name": "COALESCE(name, '')",
    "kind": "COALESCE(kind, '')",
    "source": "source",
}


class RegistryQueries:
    db: Database

    async def list_devices(self, *, kind: str | None = None, limit: int = 1000) -> list[Device]:
        where, params = ("WHERE kind = ?", [kind]) if kind else ("", [])
        rows = await self.db.fetchall(
            f"SELECT {DEVICE_COLUMNS} FROM devices {where} ORDER BY id LIMIT ?",
            [*params, limit],
        )
        return [_device(row) for row in rows]

    async def search_devices(
        self,
        *,
        kind: str | None = None,
        source: str | None = None,
        status: DeviceStatus | None = None,
        q: str | None = None,
        q_columns: Sequence[str] = ("id", "name"),
        after: str | None = None,
        limit: int = 100,
    ) -> list[Device]:
        """Devices by id, filtered; `q` matches any of `q_columns` (id, name, kind, source)
        anywhere, in any case; `after` is the last id of the previous page."""
        clauses: list[str] = []
        params: list[object] = []
        for column, value in (("kind", kind), ("source", source), ("status", status)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if q:
            matches = [f"LOWER({_SEARCHED[c]}) LIKE ? ESCAPE '\\'" for c in q_columns]
            clauses.append("(" + " OR ".join(matches) + ")")
            params += [_like(q)] * len(matches)
        if after is not None:
            clauses.append("id > ?")
            params.append(after)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self.db.fetchall(
            f"SELECT {DEVICE_COLUMNS} FROM devices {where} ORDER BY id LIMIT ?", [*params, limit]
        )
        return [_device(row) for row in rows]

    async def find_devices(
        self, text: str, *, status: DeviceStatus | None = None, limit: int = 200
    ) -> list[Device]:
        """Devices whose id, name, kind or source contains `text` (any case; its % and _ are
        plain characters), in that status if given, by id: the console's search box."""
        return await self.search_devices(
            q=text, q_columns=("id", "name", "kind", "source"), status=status, limit=limit
        )

    async def get_device(self, device_id: str) -> Device | None:
        rows = await self.db.fetchall(
            f"SELECT {DEVICE_COLUMNS} FROM devices WHERE id = ?", (device_id,)
        )
        return _device(rows[0]) if rows else None

    async def add_device(
        self,
        device_id: str,
        *,
        kind: str | None = None,
        name: str | None = None,
        attributes: Mapping[str, object] | None = None,
        source: str = "registry",
        at: float | None = None,
    ) -> Device | None:
        """Register a device before it sends anything; None if it is already there."""
        now = time.time() if at is None else at
        async with self.db.transaction() as tx:
            rows = await tx.fetchall(
                "INSERT INTO devices (id, kind, name, source, first_seen, last_seen, "
                "message_count, attributes) VALUES (?, ?, ?, ?, ?, ?, 0, ?) "
                "ON CONFLICT (id) DO NOTHING RETURNING id",
                (device_id, kind, name, source, now, now, jsoncol.dump(attributes)),
            )
        return await self.get_device(device_id) if rows else None

    async def update_device(
        self,
        device_id: str,
        *,
        flags: Mapping[str, bool] | None = None,
        attributes: Mapping[str, object] | None = None,
        name: str | None = None,
        role: Role | None = None,
        status: DeviceStatus | None = None,
        allowed_downtime_min: int | None = None,
        message_type: str | object | None = UNSET,
        team: str | object | None = UNSET,
        remove_attributes: tuple[str, ...] = (),
        at: float | None = None,
    ) -> Device | None:
        """Merge flags and attributes into a device and set the given columns; None if there
        is no such device. `message_type` and `team` take None to clear them. A status change
        stamps status_since with `at` (default now)."""
        async with self.db.transaction() as tx:
            rows = await tx.fetchall(
                "SELECT flags, attributes, name, status FROM devices WHERE id = ?", (device_id,)
            )
            if not rows:
                return None
            merged_flags = {**jsoncol.load(rows[0][0]), **(flags or {})}
            merged_attrs = {**jsoncol.load(rows[0][1]), **(attributes or {})}
            for key in remove_attributes:
                merged_attrs.pop(key, None)
            sets = ["flags = ?", "attributes = ?", "name = ?"]
            params: list[object] = [
                jsoncol.dump(merged_flags),
                jsoncol.dump(merged_attrs),
                name if name is not None else rows[0][2],
            ]
            if role is not None:
                sets.append("role = ?")
                params.append(role.value)
            if status is not None and status.value != rows[0][3]:
                when = time.time() if at is None else at
                sets += ["status = ?", "status_since = ?"]
                params += [status.value, when]
                # An operator's change: in the history, notified already (nobody is told).
                await tx.execute(
                    "INSERT INTO device_transitions (device, from_status, to_status, at, "
                    "reason, notified_at) VALUES (?, ?, ?, ?, 'set by an operator', ?)",
                    (device_id, rows[0][3], status.value, when, when),
                )
            if allowed_downtime_min is not None:
                sets.append("allowed_downtime_min = ?")
                params.append(allowed_downtime_min)
            if message_type is not UNSET:
                sets.append("message_type = ?")
                params.append(message_type)
            if team is not UNSET:
                sets.append("team = ?")
                params.append(team)
            await tx.execute(
                f"UPDATE devices SET {', '.join(sets)} WHERE id = ?", [*params, device_id]
            )
        return await self.get_device(device_id)

    async def device_links(self, device_id: str) -> list[DeviceLink]:
        """The gateways and repeaters that relayed a device's messages, latest first."""
        rows = await self.db.fetchall(
            "SELECT via, role, last_seen FROM node_gateways WHERE node = ? "
            "ORDER BY last_seen DESC, via",
            (device_id,),
        )
        return [DeviceLink(via, Role(role), float(at)) for via, role, at in rows]

    async def relayed_by(self, via: str) -> list[DeviceLink]:
        """The devices a gateway or repeater relayed, latest first (`via` names the device)."""
        rows = await self.db.fetchall(
            "SELECT node, role, last_seen FROM node_gateways WHERE via = ? "
            "ORDER BY last_seen DESC, node",
            (via,),
        )
        return [DeviceLink(node, Role(role), float(at)) for node, role, at in rows]

    async def device_flags(self, device_ids: set[str]) -> dict[str, dict[str, bool]]:
        rows = await self._device_column(device_ids, "flags")
        return {dev: {k: bool(v) for k, v in jsoncol.load(f).items()} for dev, f in rows}

    async def device_teams(self, device_ids: set[str]) -> dict[str, str | None]:
        """The team (project) of each known device: a tag some sinks write."""
        return {dev: team for dev, team in await self._device_column(device_ids, "team")}

    async def _device_column(self, device_ids: set[str], column: str) -> list[Row]:
        out: list[Row] = []
        ids = sorted(device_ids)
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            out.extend(
                await self.db.fetchall(
                    f"SELECT id, {column} FROM devices WHERE id IN ({marks})", chunk
                )
            )
        return out

    async def list_readings(
        self, device: str, *, since: float | None = None, limit: int = 100
    ) -> list[StoredReading]:
        """Readings of a device in time order: from `since`, else the latest `limit`."""
        cols = "message_id, device, quantity, value, measured_at, channel, unit, extra, reading_key"
        if since is not None:
            rows = await self.db.fetchall(
                f"SELECT {cols} FROM readings WHERE device = ? AND measured_at >= ? "
                "ORDER BY measured_at, message_id, seq LIMIT ?",
                (device, since, limit),
            )
        else:
            rows = await self.db.fetchall(
                f"SELECT {cols} FROM readings WHERE device = ? "
                "ORDER BY measured_at DESC, message_id DESC, seq DESC LIMIT ?",
                (device, limit),
            )
            rows.reverse()
        return [
            StoredReading(mid, dev, Reading(q, v, t, ch, unit, jsoncol.load(extra) or None, key))
            for mid, dev, q, v, t, ch, unit, extra, key in rows
        ]

    async def readings_page(
        self,
        device: str,
        *,
        since: float | None = None,
        until: float | None = None,
        quantity: str | None = None,
        after: ReadingKey | None = None,
        limit: int = 1000,
    ) -> tuple[list[StoredReading], ReadingKey | None]:
        """A device's readings measured in [since, until), in time order, after `after`; and
        the key to ask for the next page with (None: this was the last)."""
        clauses: list[str] = ["device = ?"]
        params: list[object] = [device]
        if since is not None:
            clauses.append("measured_at >= ?")
            params.append(since)
        if until is not None:
            clauses.append("measured_at < ?")
            params.append(until)
        if quantity is not None:
            clauses.append("quantity = ?")
            params.append(quantity)
        if after is not None:
            clauses.append(
                "(measured_at > ? OR (measured_at = ? AND (message_id > ? OR "
                "(message_id = ? AND seq > ?))))"
            )
            at = after.measured_at
            params += [at, at, after.message_id, after.message_id, after.seq]
        rows = await self.db.fetchall(
            f"SELECT {READING_COLUMNS} FROM readings WHERE {' AND '.join(clauses)} "
            "ORDER BY measured_at, message_id, seq LIMIT ?",
            [*params, limit + 1],
        )
        more = len(rows) > limit
        rows = rows[:limit]
        found = [_stored_reading(row) for row in rows]
        last = rows[-1] if more else None
        key = None if last is None else ReadingKey(float(last[4]), int(last[0]), int(last[9]))
        return found, key

    async def list_quarantine(
        self, *, source: str | None = None, before: int | None = None, limit: int = 100
    ) -> list[QuarantineEntry]:
        """Quarantined payloads, newest first; `before` is the last id of the previous page."""
        clauses: list[str] = []
        params: list[object] = []
        if source:
            clauses.append("source = ?")
            params.append(source)
        if before is not None:
            clauses.append("id < ?")
            params.append(before)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self.db.fetchall(
            "SELECT id, received_at, source, meta, payload, reason FROM quarantine "
            f"{where} ORDER BY id DESC LIMIT ?",
            [*params, limit],
        )
        return [_quarantined(row) for row in rows]

    async def get_quarantined(self, quarantine_id: int) -> QuarantineEntry | None:
        rows = await self.db.fetchall(
            "SELECT id, received_at, source, meta, payload, reason FROM quarantine WHERE id = ?",
            (quarantine_id,),
        )
        return _quarantined(rows[0]) if rows else None

    async def drop_quarantined(self, quarantine_id: int) -> bool:
        """Delete one quarantined payload; False if there is no such id."""
        async with self.db.transaction() as tx:
            rows = await tx.fetchall(
                "DELETE FROM quarantine WHERE id = ? RETURNING id", (quarantine_id,)
            )
        return bool(rows)

    async def count_quarantine(self) -> int:
        rows = await self.db.fetchall("SELECT COUNT(*) FROM quarantine")
        return int(rows[0][0])


def _quarantined(row: Row) -> QuarantineEntry:
    qid, at, src, meta, payload, reason = row
    return QuarantineEntry(int(qid), at, src, jsoncol.load(meta), bytes(payload), reason)


def _stored_reading(row: Row) -> StoredReading:
    mid, dev, q, v, t, ch, unit, extra, key = row[:9]
    return StoredReading(mid, dev, Reading(q, v, t, ch, unit, jsoncol.load(extra) or None, key))


def _device(row: Row) -> Device:
    dev_id, kind, name, source, first, last, count, attrs, flags = row[:9]
    role, status, status_since, downtime, message_type, team = row[9:]
    return Device(
        id=dev_id,
        kind=kind,
        name=name,
        source=source,
        first_seen=first,
        last_seen=last,
        message_count=int(count),
        attributes=jsoncol.load(attrs),
        flags={k: bool(v) for k, v in jsoncol.load(flags).items()},
        role=Role(role) if role else None,
        status=DeviceStatus(status),
        status_since=status_since,
        allowed_downtime_min=int(downtime),
        message_type=message_type,
        team=team,
    )
