"""OAuth tokens kept per sink, and how getting them goes."""

from __future__ import annotations

import time

from fieldbridge.model import StoredToken, TokenHealth
from fieldbridge.store.db import Database


class TokenQueries:
    db: Database

    async def load_token(self, key: str) -> StoredToken | None:
        """The token kept under `key`, or None (never kept, or only failures noted)."""
        rows = await self.db.fetchall(
            "SELECT fingerprint, access_token, refresh_token, token_type, expires_at, "
            "updated_at FROM oauth_tokens WHERE key = ?",
            (key,),
        )
        if not rows or rows[0][1] is None:
            return None
        fingerprint, access, refresh, token_type, expires_at, updated_at = rows[0]
        return StoredToken(
            fingerprint,
            access,
            refresh,
            token_type,
            None if expires_at is None else float(expires_at),
            float(updated_at),
        )

    async def save_token(self, key: str, token: StoredToken) -> None:
        """Keep a newly issued token (replacing the rotated refresh token); clears failures."""
        async with self.db.transaction() as tx:
            await tx.execute(
                "INSERT INTO oauth_tokens (key, fingerprint, access_token, refresh_token, "
                "token_type, expires_at, updated_at, failures, last_error, failed_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 0, NULL, NULL) ON CONFLICT (key) DO UPDATE SET "
                "fingerprint = excluded.fingerprint, access_token = excluded.access_token, "
                "refresh_token = excluded.refresh_token, token_type = excluded.token_type, "
                "expires_at = excluded.expires_at, updated_at = excluded.updated_at, "
                "failures = 0, last_error = NULL, failed_at = NULL",
                (
                    key,
                    token.fingerprint,
                    token.access_token,
                    token.refresh_token,
                    token.token_type,
                    token.expires_at,
                    token.updated_at,
                ),
            )

    async def note_token_failure(self, key: str, failures: int, error: str) -> None:
        """Record that getting the token failed `failures` times in a row, and why."""
        now = time.time()
        async with self.db.transaction() as tx:
            await tx.execute(
                "INSERT INTO oauth_tokens (key, updated_at, failures, last_error, failed_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
                "failures = excluded.failures, last_error = excluded.last_error, "
                "failed_at = excluded.failed_at",
                (key, now, failures, error[:2000], now),
            )

    async def token_health(self, key: str) -> TokenHealth | None:
        rows = await self.db.fetchall(
            "SELECT failures, last_error, failed_at, updated_at, expires_at FROM oauth_tokens "
            "WHERE key = ?",
            (key,),
        )
        if not rows:
            return None
        failures, last_error, failed_at, updated_at, expires_at = rows[0]
        return TokenHealth(
            key,
            int(failures),
            last_error,
            None if failed_at is None else float(failed_at),
            float(updated_at),
            None if expires_at is None else float(expires_at),
        )

    async def forget_token(self, key: str) -> None:
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM oauth_tokens WHERE key = ?", (key,))
