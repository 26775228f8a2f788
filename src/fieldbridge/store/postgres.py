"""PostgreSQL backend: psycopg 3 async connections from a small pool."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from functools import lru_cache

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from fieldbridge.errors import StoreError
from fieldbridge.store.db import Params, Plan, Row, T, drive
from fieldbridge.store.urls import mask_url


@lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    """Our queries use ? placeholders (SQLite's); psycopg wants %s."""
    return re.sub(r"\?", "%s", sql.replace("%", "%%"))


class _PgTx:
    def __init__(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Params = ()) -> None:
        await self._conn.execute(_pg_sql(sql), params)

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        async with self._conn.cursor() as cur:
            await cur.executemany(_pg_sql(sql), list(rows))

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        cur = await self._conn.execute(_pg_sql(sql), params)
        return await cur.fetchall()


class PostgresDatabase:
    """The production and scale-out store."""

    dialect = "postgresql"

    def __init__(self, conninfo: str, *, max_size: int = 4, timeout: float = 5.0) -> None:
        self._conninfo = conninfo
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[tuple[object, ...]]] = (
            AsyncConnectionPool(
                conninfo,
                min_size=1,
                max_size=max_size,
                timeout=timeout,
                open=False,
                kwargs={"autocommit": True},
                check=AsyncConnectionPool.check_connection,
            )
        )
        self._opened = False
        self._open_lock = asyncio.Lock()

    async def _open(self) -> None:
        if self._opened:
            return
        # Concurrent first users (ingest and sinks) must not open the pool twice: psycopg_pool's
        # wait() asserts when two callers wait for the same opening.
        async with self._open_lock:
            if self._opened:
                return
            try:
                await self._pool.open(wait=True, timeout=self._pool.timeout)
            except PoolTimeout as exc:
                raise StoreError(f"PostgreSQL store unreachable ({_safe(self._conninfo)})") from exc
            self._opened = True

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_PgTx]:
        await self._open()
        try:
            async with self._pool.connection() as conn, conn.transaction():
                yield _PgTx(conn)
        except (psycopg.Error, PoolTimeout) as exc:
            raise StoreError(f"PostgreSQL store: {exc}") from exc

    async def run(self, plan: Plan[T]) -> T:
        async with self.transaction() as tx:
            return await drive(tx, plan)

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        await self._open()
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(_pg_sql(sql), params)
                return await cur.fetchall()
        except (psycopg.Error, PoolTimeout) as exc:
            raise StoreError(f"PostgreSQL store: {exc}") from exc

    async def close(self) -> None:
        if self._opened:
            await self._pool.close()
            self._opened = False


def _safe(conninfo: str) -> str:
    return mask_url(conninfo)
