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

    async def forget_source_cursor(self, source: str) -> None:
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM source_cursors WHERE source = ?", (source,))
