"""Journal look-ups by device: the recent messages one device sent."""

from __future__ import annotations

from fieldbridge.model import JournalEntry
from fieldbridge.store import jsoncol
from fieldbridge.store.db import Database


class MessageQueries:
    db: Database

    async def recent_messages(
        self,
        device: str,
        *,
        since: float,
        kind: str | None = None,
        source: str | None = None,
        limit: int = 100,
    ) -> list[JournalEntry]:
        """A device's messages received at or after `since`, newest first, with payloads.

        The scan walks the received_at index, so keep `since` recent (minutes, not days).
        """
        clauses, params = ["received_at >= ?", "device = ?"], [since, device]
        if kind is not None:
            clauses.append("kind = ?")
            params.append(kind)
        if source is not None:
            clauses.append("source = ?")
            params.append(source)
        rows = await self.db.fetchall(
            "SELECT id, received_at, source, device, kind, meta, payload FROM journal "
            f"WHERE {' AND '.join(clauses)} ORDER BY id DESC LIMIT ?",
            [*params, limit],
        )
        return [
            JournalEntry(int(mid), at, src, dev, k, jsoncol.load(meta), bytes(payload))
            for mid, at, src, dev, k, meta, payload in rows
        ]
