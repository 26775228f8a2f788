"""SQLite backend: one writer thread and one reader thread, so the event loop never blocks."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from fieldbridge.errors import StoreError
from fieldbridge.store.db import Execute, ExecuteMany, Fetch, Params, Plan, Row

T = TypeVar("T")
log = logging.getLogger("fieldbridge.store")

CHECKPOINT_EVERY = 0.25  # seconds between background WAL checkpoints


class _Worker:
    """A sqlite3 connection owned by one thread; calls hop onto that thread."""

    def __init__(self, path: Path, pragmas: list[str], name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._conn: sqlite3.Connection | None = None
        self._path = path
        self._pragmas = pragmas

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            for pragma in self._pragmas:
                conn.execute(pragma)
            self._conn = conn
        return self._conn

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            return fn(self._connect())

        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, run)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store {self._path}: {exc}") from exc

    async def close(self) -> None:
        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._executor, shut)
        self._executor.shutdown(wait=True)


class _SqliteTx:
    def __init__(self, worker: _Worker) -> None:
        self._worker = worker

    async def execute(self, sql: str, params: Params = ()) -> None:
        await self._worker.call(lambda c: c.execute(sql, params))

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        await self._worker.call(lambda c: c.executemany(sql, rows))

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return await self._worker.call(lambda c: c.execute(sql, params).fetchall())


class SqliteDatabase:
    """The embedded store: WAL, synchronous=FULL by default, single writer."""

    dialect = "sqlite"

    def __init__(self, path: Path, *, synchronous: str = "full", busy_timeout_ms: int = 5000):
        path.parent.mkdir(parents=True, exist_ok=True)
        common = [f"PRAGMA busy_timeout={int(busy_timeout_ms)}"]
        writer_pragmas = [
            "PRAGMA journal_mode=WAL",
            f"PRAGMA synchronous={synchronous.upper()}",
            # Checkpoints run on a thread of their own (_Checkpointer), outside ingest commits;
            # this one, inside a commit, is only the safety net for a WAL past ~128 MiB.
            "PRAGMA wal_autocheckpoint=32000",
            *common,
        ]
        self.path = path
        self._writer = _Worker(path, writer_pragmas, "fieldbridge-sqlite-writer")
        self._reader = _Worker(path, [*common, "PRAGMA query_only=ON"], "fieldbridge-sqlite-reader")
        self._write_lock = asyncio.Lock()
        self._checkpointer = _Checkpointer(path, common) if synchronous != "off" else None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_SqliteTx]:
        async with self._write_lock:
            await self._writer.call(lambda c: c.execute("BEGIN IMMEDIATE"))
            try:
                yield _SqliteTx(self._writer)
            except BaseException:
                await self._writer.call(_rollback)
                raise
            await self._writer.call(_commit)

    async def run(self, plan: Plan[T]) -> T:
        async with self._write_lock:
            return await self._writer.call(lambda c: _run_plan(c, plan))

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return await self._reader.call(lambda c: c.execute(sql, params).fetchall())

    async def close(self) -> None:
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.stop)
        await self._writer.close()
        await self._reader.close()


class _Checkpointer:
    """Copies the WAL into the database file every CHECKPOINT_EVERY seconds, on its own
    thread and connection, so the copy and its fsync stay out of ingest commits (they made
    the commit latency spikes). PASSIVE never waits for the writer or for readers.
    """

    def __init__(self, path: Path, pragmas: list[str]) -> None:
        self._path = path
        self._pragmas = pragmas
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="fieldbridge-sqlite-checkpoint", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while not self._stop.wait(CHECKPOINT_EVERY):
                try:
                    if conn is None:
                        conn = sqlite3.connect(self._path, isolation_level=None)
                        for pragma in self._pragmas:
                            conn.execute(pragma)
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # the writer's safety net still checkpoints
                    log.debug("background checkpoint skipped: %s", exc)
        finally:
            if conn is not None:
                conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _run_plan(conn: sqlite3.Connection, plan: Plan[T]) -> T:
    """Run a whole plan as one transaction on the writer thread."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result: list[Row] | None = None
        while True:
            try:
                op = plan.send(result)
            except StopIteration as done:
                value: T = done.value
                break
            result = None
            if isinstance(op, Fetch):
                result = conn.execute(op.sql, op.params).fetchall()
            elif isinstance(op, ExecuteMany):
                conn.executemany(op.sql, op.rows)
            elif isinstance(op, Execute):
                conn.execute(op.sql, op.params)
    except BaseException:
        _rollback(conn)
        raise
    _commit(conn)
    return value


def _commit(conn: sqlite3.Connection) -> Any:
    try:
        return conn.execute("COMMIT")
    except sqlite3.Error:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")
