"""Positions of pulling sources (a Redis stream's last committed entry id)."""

from __future__ import annotations

import time

from fieldbridge.store.db import Database


class SourceCursorQueries:
    db: Database

    async def source_cursor(self, source: str) -> str | None:
        """The position `source` saved last, or None if it never saved one."""
        rows = await self.db.fetchall(
            "SELECT position FROM source_cursors WHERE source = ?", (source,)
        )
        return str(rows[0][0]) if rows else None

    async def save_source_cursor(self, source: str, position: str) -> None:
        """Keep `position`: call only once everything up to it is committed."""
        async with self.db.transaction() as tx:
            await tx.execute(
                "INSERT INTO source_cursors (source, position, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (source) DO UPDATE SET position = excluded.position, "
                "updated_at = excluded.updated_at",
                (source, position, time.time()),
            )

    async def newest_key(self, source: str) -> str | None:
        """The idempotency key of the newest journal message of `source` (a batch-journalling
        stream source: the last entry id stored), or None."""
        rows = await self.db.fetchall(
            "SELECT idem_key FROM journal WHERE source = ? AND idem_key IS NOT NULL "
            "ORDER BY id DESC LIMIT 1",
            (source,),
        )
        return str(rows[0][0]) if rows else None

    async def forget_source_cursor(self, source: str) -> None:
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM source_cursors WHERE source = ?", (source,))
