"""Read-only summaries the console shows: ingest rate, device search, a quantity over time."""

from __future__ import annotations

from dataclasses import dataclass

from fieldbridge.store.db import Database

MAX_POINTS = 20_000  # readings of one quantity a chart gets at most


@dataclass(frozen=True, slots=True)
class IngestBucket:
    """How many messages one source delivered in one time bucket."""

    source: str
    start: float  # Unix seconds, a multiple of the bucket width
    messages: int


@dataclass(frozen=True, slots=True)
class Point:
    """One reading of a quantity, as a chart plots it."""

    measured_at: float
    value: float | None
    channel: int
    unit: str | None


class ActivityQueries:
    db: Database

    async def ingest_rate(self, since: float, bucket_s: int) -> list[IngestBucket]:
        """Journal messages received from `since` on, counted per source and `bucket_s` bucket,
        in time order (buckets without messages are left out)."""
        # PostgreSQL's CAST rounds a double; FLOOR is what both mean (SQLite may lack FLOOR,
        # and its CAST truncates, which is the floor for times after 1970).
        floor = (
            "CAST(received_at / ? AS INTEGER)"
            if self.db.dialect == "sqlite"
            else ("CAST(FLOOR(received_at / ?) AS BIGINT)")
        )
        rows = await self.db.fetchall(
            f"SELECT source, {floor} AS bucket, COUNT(*) FROM journal WHERE received_at >= ? "
            "GROUP BY source, bucket ORDER BY bucket, source",
            (bucket_s, since),
        )
        return [IngestBucket(src, float(b) * bucket_s, int(n)) for src, b, n in rows]

    async def device_status_counts(self) -> dict[str, int]:
        """How many devices are current, down or in maintenance."""
        rows = await self.db.fetchall("SELECT status, COUNT(*) FROM devices GROUP BY status")
        return {str(status): int(n) for status, n in rows}

    async def device_quantities(self, device: str, since: float, until: float) -> list[str]:
        """The quantities a device measured in a time range, by name."""
        rows = await self.db.fetchall(
            "SELECT DISTINCT quantity FROM readings WHERE device = ? AND measured_at >= ? "
            "AND measured_at < ? ORDER BY quantity",
            (device, since, until),
        )
        return [str(row[0]) for row in rows]

    async def quantity_points(
        self, device: str, quantity: str, since: float, until: float, *, limit: int = MAX_POINTS
    ) -> list[Point]:
        """A device's readings of one quantity in a time range, oldest first (the latest
        `limit` when there are more)."""
        rows = await self.db.fetchall(
            "SELECT measured_at, value, channel, unit FROM readings WHERE device = ? "
            "AND measured_at >= ? AND measured_at < ? AND quantity = ? "
            "ORDER BY measured_at DESC LIMIT ?",
            (device, since, until, quantity, limit),
        )
        rows.reverse()
        return [
            Point(float(at), None if v is None else float(v), int(ch), unit)
            for at, v, ch, unit in rows
        ]
