"""PostgreSQL backend: psycopg 3 async connections from a small pool, every call on a deadline."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Coroutine, Iterable, Mapping
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from fieldbridge.errors import ConfigError, StoreError
from fieldbridge.store.db import Params, Plan, Row, T, Timeout, drive
from fieldbridge.store.urls import mask_url

log = logging.getLogger("fieldbridge.store")

R = TypeVar("R")
Conn = psycopg.AsyncConnection[tuple[Any, ...]]

DEFAULT_COMMIT_TIMEOUT_S = 10.0  # store.commit_timeout_s
# A rollback after a failed statement gets this long at most; past it the connection is
# dropped. Also how long closing the store waits for hung connections to be let go.
ROLLBACK_WITHIN = 2.0
# How long the pool keeps retrying to replace a lost connection before it gives the slot up;
# the next caller then opens a fresh one at once. psycopg_pool's default (5 min) lets its
# back-off grow to minutes, so a store back from an outage would wait that long for us.
RECONNECT_TIMEOUT_S = 15.0


@lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    """Our queries use ? placeholders (SQLite's); psycopg wants %s."""
    return re.sub(r"\?", "%s", sql.replace("%", "%%"))


class _Late(StoreError):
    """A call passed its deadline; its connection is being dropped."""


class _Lease:
    """A connection taken from the pool for one transaction or query, until one deadline."""

    def __init__(self, db: PostgresDatabase, conn: Conn, until: float, within: Timeout) -> None:
        self.db = db
        self.conn = conn
        self.until = until
        self.within = within
        self.dropped = False  # a call on it was abandoned: the retiring task owns it now

    async def call(self, work: Coroutine[Any, Any, R], until: float | None = None) -> R:
        try:
            return await self.db.bounded(work, until or self.until, self.within, self.conn)
        except (_Late, asyncio.CancelledError):
            self.dropped = True
            raise

    async def rollback(self) -> None:
        """End an open transaction, or drop the connection if that fails too."""
        status = self.conn.pgconn.transaction_status
        if self.dropped or status not in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
            return
        # Within the call's own deadline: past it the connection is dropped instead.
        until = min(self.until, asyncio.get_running_loop().time() + ROLLBACK_WITHIN)
        try:
            await self.call(self.conn.execute("ROLLBACK"), until)
        except StoreError as exc:
            log.warning("rollback failed; dropping the connection: %s", exc)

    async def release(self) -> None:
        """Back to the pool: only an idle connection is kept, any other is closed first (the
        pool would roll it back itself, without a deadline)."""
        if self.dropped:
            return
        if self.conn.pgconn.transaction_status != TransactionStatus.IDLE:
            await self.conn.close()
        await self.db.putconn(self.conn)


class _PgTx:
    def __init__(self, lease: _Lease) -> None:
        self._lease = lease
        self._conn = lease.conn

    async def execute(self, sql: str, params: Params = ()) -> None:
        await self._lease.call(self._conn.execute(_pg_sql(sql), params))

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        async def many() -> None:
            async with self._conn.cursor() as cur:
                await cur.executemany(_pg_sql(sql), list(rows))

        await self._lease.call(many())

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return await self._lease.call(_fetch(self._conn, sql, params))


async def _fetch(conn: Conn, sql: str, params: Params) -> list[Row]:
    cur = await conn.execute(_pg_sql(sql), params)
    return await cur.fetchall()


class PostgresDatabase:
    """The production and scale-out store.

    Every call runs until a deadline (`commit_timeout_s` unless the caller gives its own): a
    proxy or network that stops passing bytes still acknowledges at TCP level, so neither
    libpq's nor the kernel's timeouts would end a statement waiting for its answer. A call
    past its deadline raises StoreError at once; its connection is cancelled and closed in
    the background and never returns to the pool.
    """

    dialect = "postgresql"

    def __init__(
        self,
        conninfo: str,
        *,
        params: Mapping[str, str] | None = None,
        commit_timeout_s: float = DEFAULT_COMMIT_TIMEOUT_S,
        max_size: int = 4,
    ) -> None:
        """`params`: libpq keywords (connect_timeout, keepalives, options, ...) for those the
        URL does not set itself; the URL's own win."""
        self._where = mask_url(conninfo)
        try:
            given = conninfo_to_dict(conninfo)
        except psycopg.ProgrammingError as exc:
            raise ConfigError(f"store.url {self._where!r}: {exc}") from None
        kwargs: dict[str, Any] = {"autocommit": True}
        kwargs.update({k: v for k, v in (params or {}).items() if k not in given})
        self._timeout = Timeout(commit_timeout_s)
        self._pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            conninfo,
            min_size=1,
            max_size=max_size,
            timeout=commit_timeout_s,
            open=False,
            kwargs=kwargs,
            check=AsyncConnectionPool.check_connection,
            reconnect_timeout=RECONNECT_TIMEOUT_S,
        )
        self._opened = False
        self._open_lock = asyncio.Lock()
        self._abandoned: set[asyncio.Future[Any]] = set()
        self._retiring: set[asyncio.Task[None]] = set()

    async def _open(self) -> None:
        if self._opened:
            return
        # Concurrent first users (ingest and sinks) must not open the pool twice. It opens
        # without waiting for a connection: a pool whose wait() times out is closed for good,
        # and callers wait for a connection within their own deadlines anyway.
        async with self._open_lock:
            if not self._opened:
                await self._pool.open(wait=False)
                self._opened = True

    @asynccontextmanager
    async def _lease(self, within: Timeout | None) -> AsyncIterator[_Lease]:
        within = within or self._timeout
        until = asyncio.get_running_loop().time() + within.seconds
        await self._open()
        left = max(0.001, until - asyncio.get_running_loop().time())
        try:
            # bounded() as well: getconn runs the pool's check on the connection it hands out,
            # a query with no deadline of its own.
            conn = await self.bounded(self._pool.getconn(timeout=left), until, within, None)
        except PoolTimeout:
            what = within.error(f"PostgreSQL store {self._where}")
            raise StoreError(
                f"{what}: no connection to it could be had (the psycopg.pool log lines say why)"
            ) from None
        lease = _Lease(self, conn, until, within)
        try:
            yield lease
        finally:
            await lease.release()

    @asynccontextmanager
    async def transaction(self, within: Timeout | None = None) -> AsyncIterator[_PgTx]:
        async with self._lease(within) as lease:
            try:
                await lease.call(lease.conn.execute("BEGIN"))
                yield _PgTx(lease)
                await lease.call(lease.conn.execute("COMMIT"))
            except BaseException:
                await lease.rollback()
                raise

    async def run(self, plan: Plan[T]) -> T:
        async with self.transaction() as tx:
            return await drive(tx, plan)

    async def fetchall(
        self, sql: str, params: Params = (), *, within: Timeout | None = None
    ) -> list[Row]:
        async with self._lease(within) as lease:
            return await lease.call(_fetch(lease.conn, sql, params))

    async def putconn(self, conn: Conn) -> None:
        await self._pool.putconn(conn)

    async def bounded(
        self, work: Coroutine[Any, Any, R], until: float, within: Timeout, conn: Conn | None
    ) -> R:
        """Await `work` until `until` (loop time); past it, or when the caller is cancelled,
        leave it to be cancelled and its connection (`conn`) dropped in the background."""
        task = asyncio.ensure_future(work)
        left = max(0.0, until - asyncio.get_running_loop().time())
        try:
            done, _ = await asyncio.wait({task}, timeout=left)
        except asyncio.CancelledError:
            self._abandon(task, conn)
            raise
        if not done:
            self._abandon(task, conn)
            raise _Late(within.error(f"PostgreSQL store {self._where}"))
        try:
            return task.result()
        except PoolTimeout:
            raise
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL store: {exc}") from exc

    def _abandon(self, task: asyncio.Future[Any], conn: Conn | None) -> None:
        # Cancelling does not end the task at once: psycopg asks the server to cancel over a
        # new connection (which hangs as well when the store does), for at most 5 s, waits
        # up to 5 s more for the answer, then closes the connection. The caller does not wait.
        task.cancel()
        self._abandoned.add(task)
        task.add_done_callback(self._abandoned.discard)
        retire = asyncio.create_task(self._retire(task, conn), name="fieldbridge-pg-retire")
        self._retiring.add(retire)
        retire.add_done_callback(self._retiring.discard)

    async def _retire(self, task: asyncio.Future[Any], conn: Conn | None) -> None:
        await asyncio.wait({task})
        late = None if task.cancelled() or task.exception() else task.result()
        try:
            if conn is not None:
                await conn.close()  # a closed connection put back is discarded and replaced
                await self._pool.putconn(conn)
            elif isinstance(late, psycopg.AsyncConnection):  # a getconn that ended late
                await self._pool.putconn(late)
        except Exception as exc:  # the pool may be closed by now
            log.debug("dropping a late PostgreSQL connection: %s", exc)

    async def close(self) -> None:
        for task in list(self._abandoned):
            task.cancel()  # cancelled again, psycopg closes the connection at once
        if self._retiring:
            await asyncio.wait(self._retiring, timeout=ROLLBACK_WITHIN)
        if self._opened:
            await self._pool.close()
            self._opened = False
