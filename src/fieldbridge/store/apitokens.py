"""API tokens for scripts: kept as SHA-256 hashes with a scope, revocable."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from fieldbridge.errors import StoreError
from fieldbridge.store.db import Database

log = logging.getLogger("fieldbridge.store")

TOUCH_EVERY = 60.0  # seconds: last_used is written at most this often per token


@dataclass(frozen=True, slots=True)
class ApiToken:
    name: str
    scope: str  # read | write
    created_at: float
    created_by: str
    last_used: float | None
    revoked_at: float | None


def _token(row: tuple[object, ...]) -> ApiToken:
    name, scope, created, by, used, revoked = row
    return ApiToken(
        str(name),
        str(scope),
        float(created),  # type: ignore[arg-type]
        str(by),
        None if used is None else float(used),  # type: ignore[arg-type]
        None if revoked is None else float(revoked),  # type: ignore[arg-type]
    )


_COLUMNS = "name, scope, created_at, created_by, last_used, revoked_at"


class ApiTokenQueries:
    db: Database

    async def create_api_token(
        self, name: str, scope: str, token_hash: str, created_by: str = ""
    ) -> bool:
        """Keep a new token's hash; False when a token of that name exists (even revoked:
        names are never reused, so the audit log stays unambiguous)."""
        async with self.db.transaction() as tx:
            rows = await tx.fetchall(
                "INSERT INTO api_tokens (name, scope, token_hash, created_at, created_by) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING RETURNING name",
                (name, scope, token_hash, time.time(), created_by),
            )
        return bool(rows)

    async def list_api_tokens(self) -> list[ApiToken]:
        rows = await self.db.fetchall(f"SELECT {_COLUMNS} FROM api_tokens ORDER BY name")
        return [_token(tuple(r)) for r in rows]

    async def api_token_by_hash(self, token_hash: str) -> ApiToken | None:
        """The unrevoked token of that hash (its last use noted), or None."""
        rows = await self.db.fetchall(
            f"SELECT {_COLUMNS} FROM api_tokens WHERE token_hash = ? AND revoked_at IS NULL",
            (token_hash,),
        )
        if not rows:
            return None
        token = _token(tuple(rows[0]))
        now = time.time()
        if token.last_used is None or now - token.last_used > TOUCH_EVERY:
            try:
                async with self.db.transaction() as tx:
                    await tx.execute(
                        "UPDATE api_tokens SET last_used = ? WHERE name = ?", (now, token.name)
                    )
            except StoreError as exc:  # a store that reads but cannot write still serves reads
                log.warning("token %s: last use not noted: %s", token.name, exc)
        return token

    async def revoke_api_token(self, name: str) -> bool:
        """Revoke a token; False when there is no such unrevoked token."""
        async with self.db.transaction() as tx:
            rows = await tx.fetchall(
                "UPDATE api_tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL "
                "RETURNING name",
                (time.time(), name),
            )
        return bool(rows)
