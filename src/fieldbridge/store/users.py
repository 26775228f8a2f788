"""Console users (name, role, password hash) and their login sessions."""

from __future__ import annotations

import time
from dataclasses import dataclass

from fieldbridge.store.db import Database


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: str  # admin | viewer
    created_at: float
    last_login: float | None


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in browser: whose, its CSRF token, until when."""

    username: str
    role: str
    csrf_token: str
    expires_at: float


class UserQueries:
    db: Database

    async def count_users(self) -> int:
        rows = await self.db.fetchall("SELECT COUNT(*) FROM users")
        return int(rows[0][0])

    async def list_users(self) -> list[User]:
        rows = await self.db.fetchall(
            "SELECT name, role, created_at, last_login FROM users ORDER BY name"
        )
        return [User(n, r, float(c), None if ll is None else float(ll)) for n, r, c, ll in rows]

    async def get_user(self, name: str) -> User | None:
        rows = await self.db.fetchall(
            "SELECT name, role, created_at, last_login FROM users WHERE name = ?", (name,)
        )
        if not rows:
            return None
        n, r, c, ll = rows[0]
        return User(n, r, float(c), None if ll is None else float(ll))

    async def add_user(self, name: str, role: str, password_hash: str) -> bool:
        """Add a user; False when one of that name exists (nothing changed)."""
        async with self.db.transaction() as tx:
            rows = await tx.fetchall(
                "INSERT INTO users (name, role, password_hash, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO NOTHING RETURNING name",
                (name, role, password_hash, time.time()),
            )
        return bool(rows)

    async def password_hash(self, name: str) -> str | None:
        rows = await self.db.fetchall("SELECT password_hash FROM users WHERE name = ?", (name,))
        return str(rows[0][0]) if rows else None

    async def set_password(self, name: str, password_hash: str) -> bool:
        """Replace a user's password hash and end their sessions; False if no such user."""
        async with self.db.transaction() as tx:
            rows = await tx.fetchall(
                "UPDATE users SET password_hash = ? WHERE name = ? RETURNING name",
                (password_hash, name),
            )
            await tx.execute("DELETE FROM sessions WHERE username = ?", (name,))
        return bool(rows)

    async def set_role(self, name: str, role: str) -> bool:
        async with self.db.transaction() as tx:
            rows = await tx.fetchall(
                "UPDATE users SET role = ? WHERE name = ? RETURNING name", (role, name)
            )
        return bool(rows)

    async def delete_user(self, name: str) -> bool:
        """Remove a user and their sessions; False if no such user."""
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM sessions WHERE username = ?", (name,))
            rows = await tx.fetchall("DELETE FROM users WHERE name = ? RETURNING name", (name,))
        return bool(rows)

    async def open_session(
        self, id_hash: str, username: str, csrf_token: str, expires_at: float
    ) -> None:
        """Keep a new session and note the login; expired sessions go at the same time."""
        now = time.time()
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM sessions WHERE expires_at < ?", (now,))
            await tx.execute(
                "INSERT INTO sessions (id_hash, username, csrf_token, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (id_hash, username, csrf_token, now, expires_at),
            )
            await tx.execute("UPDATE users SET last_login = ? WHERE name = ?", (now, username))

    async def session(self, id_hash: str) -> Session | None:
        """The unexpired session of that hash with its user's current role, or None."""
        rows = await self.db.fetchall(
            "SELECT s.username, u.role, s.csrf_token, s.expires_at FROM sessions s "
            "JOIN users u ON u.name = s.username WHERE s.id_hash = ? AND s.expires_at > ?",
            (id_hash, time.time()),
        )
        if not rows:
            return None
        username, role, csrf, expires = rows[0]
        return Session(username, role, csrf, float(expires))

    async def close_session(self, id_hash: str) -> None:
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM sessions WHERE id_hash = ?", (id_hash,))
