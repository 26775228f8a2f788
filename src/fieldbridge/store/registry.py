"""Device registry and readings queries."""

from __future__ import annotations

import time
from collections.abc import Mapping

from fieldbridge.model import Device, QuarantineEntry, Reading, StoredReading
from fieldbridge.store import jsoncol
from fieldbridge.store.db import Database, Row

DEVICE_COLUMNS = "id, kind, name, source, first_seen, last_seen, message_count, attributes, flags"


class RegistryQueries:
    db: Database

    async def list_devices(self, *, kind: str | None = None, limit: int = 1000) -> list[Device]:
        where, params = ("WHERE kind = ?", [kind]) if kind else ("", [])
        rows = await self.db.fetchall(
            f"SELECT {DEVICE_COLUMNS} FROM devices {where} ORDER BY id LIMIT ?",
            [*params, limit],
        )
        return [_device(row) for row in rows]

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
    ) -> Device | None:
        """Merge flags and attributes into a device; None if there is no such device."""
        async with self.db.transaction() as tx:
            rows = await tx.fetchall(
                "SELECT flags, attributes, name FROM devices WHERE id = ?", (device_id,)
            )
            if not rows:
                return None
            merged_flags = {**jsoncol.load(rows[0][0]), **(flags or {})}
            merged_attrs = {**jsoncol.load(rows[0][1]), **(attributes or {})}
            await tx.execute(
                "UPDATE devices SET flags = ?, attributes = ?, name = ? WHERE id = ?",
                (
                    jsoncol.dump(merged_flags),
                    jsoncol.dump(merged_attrs),
                    name if name is not None else rows[0][2],
                    device_id,
                ),
            )
        return await self.get_device(device_id)

    async def device_flags(self, device_ids: set[str]) -> dict[str, dict[str, bool]]:
        out: dict[str, dict[str, bool]] = {}
        ids = sorted(device_ids)
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            rows = await self.db.fetchall(
                f"SELECT id, flags FROM devices WHERE id IN ({marks})", chunk
            )
            out.update({dev: {k: bool(v) for k, v in jsoncol.load(f).items()} for dev, f in rows})
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

    async def list_quarantine(
        self, *, source: str | None = None, limit: int = 100
    ) -> list[QuarantineEntry]:
        where, params = ("WHERE source = ?", [source]) if source else ("", [])
        rows = await self.db.fetchall(
            "SELECT id, received_at, source, meta, payload, reason FROM quarantine "
            f"{where} ORDER BY id DESC LIMIT ?",
            [*params, limit],
        )
        return [
            QuarantineEntry(qid, at, src, jsoncol.load(meta), bytes(payload), reason)
            for qid, at, src, meta, payload, reason in rows
        ]

    async def count_quarantine(self) -> int:
        rows = await self.db.fetchall("SELECT COUNT(*) FROM quarantine")
        return int(rows[0][0])


def _device(row: Row) -> Device:
    dev_id, kind, name, source, first, last, count, attrs, flags = row
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
    )
