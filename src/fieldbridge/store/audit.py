"""The audit log: every change made through the console, the API or the users/tokens
commands, with who made it and when."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fieldbridge.store import jsoncol
from fieldbridge.store.db import Database

MAX_PAGE = 1000


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: float
    actor: str
    action: str
    target: str
    details: dict[str, Any] = field(default_factory=dict)


class AuditQueries:
    db: Database

    async def record_audit(
        self,
        actor: str,
        action: str,
        target: str = "",
        details: Mapping[str, Any] | None = None,
    ) -> None:
        async with self.db.transaction() as tx:
            await tx.execute(
                "INSERT INTO audit_log (at, actor, action, target, details) VALUES (?, ?, ?, ?, ?)",
                (time.time(), actor, action, target, jsoncol.dump(details)),
            )

    async def list_audit(
        self,
        limit: int = 100,
        before: int | None = None,
        actor: str | None = None,
        action: str | None = None,
    ) -> list[AuditEntry]:
        """Newest first; `before` an entry id for the next page."""
        where: list[str] = ["1 = 1"]
        params: list[object] = []
        if before is not None:
            where.append("id < ?")
            params.append(before)
        if actor is not None:
            where.append("actor = ?")
            params.append(actor)
        if action is not None:
            where.append("action = ?")
            params.append(action)
        params.append(max(1, min(limit, MAX_PAGE)))
        rows = await self.db.fetchall(
            "SELECT id, at, actor, action, target, details FROM audit_log "
            f"WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?",
            tuple(params),
        )
        return [
            AuditEntry(int(i), float(at), a, act, t, jsoncol.load(d))
            for i, at, a, act, t, d in rows
        ]
