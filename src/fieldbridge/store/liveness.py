"""Device liveness: silent devices go down, a message brings one back up, each change is kept
as a transition whose notifications are published once; who is notified of which device."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from fieldbridge.model import DeviceStatus, NotifyChannel, Subscriber, Transition
from fieldbridge.store.db import Database, ExecuteMany, Fetch, Plan, Row
from fieldbridge.timefmt import iso

CHUNK = 500  # ids per IN (...) list
_TRANSITION = "id, device, from_status, to_status, at, reason, notified_at"


def _transition(row: Row) -> Transition:
    tid, device, before, after, at, reason, notified = row
    return Transition(
        int(tid),
        device,
        DeviceStatus(before),
        DeviceStatus(after),
        float(at),
        reason or "",
        None if notified is None else float(notified),
    )


def bring_back_up(last_seen: dict[str, float]) -> Plan[None]:
    """Part of the ingest commit: devices that were down and sent a message are current again,
    each with a down -> current transition at the time of its latest message."""
    ids = sorted(last_seen)
    down: list[str] = []
    for i in range(0, len(ids), CHUNK):
        chunk = ids[i : i + CHUNK]
        marks = ",".join("?" * len(chunk))
        rows = yield Fetch(
            f"SELECT id FROM devices WHERE status = 'down' AND id IN ({marks})", chunk
        )
        down.extend(row[0] for row in rows or ())
    if not down:
        return
    yield ExecuteMany(
        "UPDATE devices SET status = 'current', status_since = ? WHERE id = ? AND status = 'down'",
        [(last_seen[dev], dev) for dev in down],
    )
    yield ExecuteMany(
        "INSERT INTO device_transitions (device, from_status, to_status, at, reason) "
        "VALUES (?, 'down', 'current', ?, 'a message arrived')",
        [(dev, last_seen[dev]) for dev in down],
    )


class LivenessQueries:
    db: Database

    async def mark_silent_down(self, now: float, *, source: str | None = None) -> list[Transition]:
        """Devices `current` whose last message is older than their allowed downtime go down
        (only those first seen on `source`, when given); the transitions made."""
        where = "status = 'current' AND last_seen < ? - allowed_downtime_min * 60.0"
        params: list[object] = [now]
        if source is not None:
            where += " AND source = ?"
            params.append(source)
        async with self.db.transaction() as tx:
            rows = await tx.fetchall(
                f"SELECT id, last_seen, allowed_downtime_min FROM devices WHERE {where}", params
            )
            if not rows:
                return []
            # The silence is checked again in the UPDATE: a message committed meanwhile (its
            # ingest holds the row until then; PostgreSQL re-reads it) keeps the device current.
            await tx.executemany(
                "UPDATE devices SET status = 'down', status_since = ? WHERE id = ? AND "
                "status = 'current' AND last_seen < ? - allowed_downtime_min * 60.0",
                [(now, dev, now) for dev, _, _ in rows],
            )
            gone: list[Row] = []
            for i in range(0, len(rows), CHUNK):
                chunk = [dev for dev, _, _ in rows[i : i + CHUNK]]
                marks = ",".join("?" * len(chunk))
                gone += await tx.fetchall(
                    "SELECT id, last_seen, allowed_downtime_min FROM devices "
                    f"WHERE id IN ({marks}) AND status = 'down' AND status_since = ?",
                    [*chunk, now],
                )
            if not gone:
                return []
            gone.sort()
            await tx.executemany(
                "INSERT INTO device_transitions (device, from_status, to_status, at, reason) "
                "VALUES (?, 'current', 'down', ?, ?)",
                [
                    (dev, now, f"no message since {iso(float(last))} (allowed {int(mins)} min)")
                    for dev, last, mins in gone
                ],
            )
            made = await tx.fetchall(
                f"SELECT {_TRANSITION} FROM device_transitions WHERE at = ? AND "
                "to_status = 'down' AND notified_at IS NULL ORDER BY id",
                [now],
            )
        ours = {row[0] for row in gone}
        return [t for t in map(_transition, made) if t.device in ours]

    async def record_transition(
        self, device: str, before: DeviceStatus, after: DeviceStatus, at: float, reason: str
    ) -> None:
        """A change made by an operator: kept in the history, nobody notified."""
        async with self.db.transaction() as tx:
            await tx.execute(
                "INSERT INTO device_transitions (device, from_status, to_status, at, reason, "
                "notified_at) VALUES (?, ?, ?, ?, ?, ?)",
                (device, before.value, after.value, at, reason, at),
            )

    async def pending_transitions(
        self, limit: int = 100, *, source: str | None = None
    ) -> list[Transition]:
        """Transitions whose notifications are not published yet, oldest first (only those of
        devices first seen on `source`, when given: each monitor tells of its own network)."""
        columns = ", ".join(f"t.{c.strip()}" for c in _TRANSITION.split(","))
        if source is None:
            sql = f"SELECT {columns} FROM device_transitions t WHERE t.notified_at IS NULL "
            params: tuple[object, ...] = (limit,)
        else:
            sql = (
                f"SELECT {columns} FROM device_transitions t JOIN devices d ON d.id = t.device "
                "WHERE t.notified_at IS NULL AND d.source = ? "
            )
            params = (source, limit)
        rows = await self.db.fetchall(sql + "ORDER BY t.id LIMIT ?", params)
        return [_transition(row) for row in rows]

    async def mark_notified(self, transition_id: int, at: float) -> None:
        async with self.db.transaction() as tx:
            await tx.execute(
                "UPDATE device_transitions SET notified_at = ? WHERE id = ?", (at, transition_id)
            )

    async def transitions(self, device: str, limit: int = 20) -> list[Transition]:
        """A device's latest status changes, newest first."""
        rows = await self.db.fetchall(
            f"SELECT {_TRANSITION} FROM device_transitions WHERE device = ? "
            "ORDER BY at DESC, id DESC LIMIT ?",
            (device, limit),
        )
        return [_transition(row) for row in rows]

    async def subscribers(self, devices: Iterable[str]) -> dict[str, list[Subscriber]]:
        out: dict[str, list[Subscriber]] = {}
        ids = sorted(set(devices))
        for i in range(0, len(ids), CHUNK):
            chunk = ids[i : i + CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = await self.db.fetchall(
                "SELECT device, channel, address FROM device_subscribers "
                f"WHERE device IN ({marks}) ORDER BY device, channel, address",
                chunk,
            )
            for device, channel, address in rows:
                out.setdefault(device, []).append(Subscriber(NotifyChannel(channel), address))
        return out

    async def set_subscribers(
        self, device: str, *, add: Sequence[Subscriber] = (), remove: Sequence[Subscriber] = ()
    ) -> list[Subscriber]:
        """Add and remove who is notified of `device`; the subscribers after."""
        async with self.db.transaction() as tx:
            for sub in remove:
                await tx.execute(
                    "DELETE FROM device_subscribers WHERE device = ? AND channel = ? AND "
                    "address = ?",
                    (device, sub.channel.value, sub.address),
                )
            for sub in add:
                await tx.execute(
                    "INSERT INTO device_subscribers (device, channel, address) VALUES (?, ?, ?) "
                    "ON CONFLICT DO NOTHING",
                    (device, sub.channel.value, sub.address),
                )
        return (await self.subscribers([device])).get(device, [])
