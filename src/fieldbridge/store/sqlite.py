"""SQLite backend: one writer thread and one reader thread, so the event loop never blocks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from fieldbridge.errors import StoreError
from fieldbridge.store.db import Execute, ExecuteMany, Fetch, Params, Plan, Row, Timeout

T = TypeVar("T")
log = logging.getLogger("fieldbridge.store")

DEFAULT_COMMIT_TIMEOUT_S = 10.0  # store.commit_timeout_s
CHECKPOINT_EVERY = 0.25  # seconds between background WAL checkpoints
# WAL is a property of the file, kept across connections: migrations set it when they create
# the database (store/migrate.py), and the writer checks it. A file still in rollback-journal
# mode lets another process's write lock block every reader, the CLI included.
WAL_PRAGMA = "PRAGMA journal_mode=WAL"


class _Worker:
    """A sqlite3 connection owned by one thread; calls hop onto that thread."""

    def __init__(
        self, path: Path, pragmas: list[str], name: str, *, wal_within: float | None = None
    ) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._conn: sqlite3.Connection | None = None
        self._path = path
        self._pragmas = pragmas
        self._wal_within = wal_within

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = open_connection(self._path, self._pragmas, wal_within=self._wal_within)
        return self._conn

    async def call(
        self, fn: Callable[[sqlite3.Connection], T], within: Timeout, until: float | None = None
    ) -> T:
        """Run `fn` on the thread; StoreError if it has not ended by `until` (loop time;
        default: `within` from now), while the thread carries on with it."""
        loop = asyncio.get_running_loop()

        def run() -> T:
            return fn(self._connect())

        job = asyncio.wrap_future(self._executor.submit(run))
        left = within.seconds if until is None else max(0.0, until - loop.time())
        # asyncio.wait, not wait_for: a thread cannot be interrupted, and a job still queued
        # must run even when its caller gives up or is cancelled (a queued ROLLBACK is what
        # leaves the connection clean for the next transaction). Later jobs queue behind it.
        done, _ = await asyncio.wait({job}, timeout=left)
        if not done:
            job.add_done_callback(self._late)
            raise StoreError(within.error(f"SQLite store {self._path}"))
        try:
            return job.result()
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store {self._path}: {exc}") from exc

    def _late(self, job: asyncio.Future[Any]) -> None:
        if job.cancelled() or job.exception() is None:
            log.info("a SQLite store call on %s ended after its deadline", self._path)
        else:
            log.warning(
                "a SQLite store call on %s failed after its deadline: %s",
                self._path,
                job.exception(),
            )

    async def close(self) -> None:
        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._executor, shut)
        self._executor.shutdown(wait=True)


class _SqliteTx:
    def __init__(self, worker: _Worker, within: Timeout, until: float) -> None:
        self._worker = worker
        self._timeout = within
        self._until = until

    async def execute(self, sql: str, params: Params = ()) -> None:
        await self._call(lambda c: c.execute(sql, params))

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        await self._call(lambda c: c.executemany(sql, rows))

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return await self._call(lambda c: c.execute(sql, params).fetchall())

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._worker.call(fn, self._timeout, self._until)


class SqliteDatabase:
    """The embedded store: WAL, synchronous=FULL by default, single writer."""

    dialect = "sqlite"

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str = "full",
        busy_timeout_ms: int = 5000,
        commit_timeout_s: float | None = None,
    ):
        """`commit_timeout_s`: the deadline of every call (store.commit_timeout_s); unset, 10 s
        or busy_timeout + 5 s, whichever is longer. It must exceed busy_timeout: a commit that
        waits for another process's lock then fails with SQLite's "database is locked", and a
        lock held for less than busy_timeout only delays commits."""
        if commit_timeout_s is None:
            commit_timeout_s = max(DEFAULT_COMMIT_TIMEOUT_S, busy_timeout_ms / 1000 + 5.0)
        self._timeout = Timeout(commit_timeout_s)
        path.parent.mkdir(parents=True, exist_ok=True)
        # busy_timeout comes first: every later pragma may wait for another process's lock.
        common = [f"PRAGMA busy_timeout={int(busy_timeout_ms)}"]
        writer_pragmas = [
            *common,
            f"PRAGMA synchronous={synchronous.upper()}",
            # Checkpoints run on a thread of their own (_Checkpointer), outside ingest commits;
            # this one, inside a commit, is only the safety net for a WAL past ~128 MiB.
            "PRAGMA wal_autocheckpoint=32000",
        ]
        self.path = path
        self._writer = _Worker(
            path, writer_pragmas, "fieldbridge-sqlite-writer", wal_within=busy_timeout_ms / 1000
        )
        self._reader = _Worker(path, [*common, "PRAGMA query_only=ON"], "fieldbridge-sqlite-reader")
        self._write_lock = asyncio.Lock()
        self._checkpointer = _Checkpointer(path, common) if synchronous != "off" else None

    @asynccontextmanager
    async def transaction(self, within: Timeout | None = None) -> AsyncIterator[_SqliteTx]:
        within = within or self._timeout
        until = asyncio.get_running_loop().time() + within.seconds
        writer = self._writer
        async with self._write_lock:
            try:
                await writer.call(lambda c: c.execute("BEGIN IMMEDIATE"), within, until)
                yield _SqliteTx(writer, within, until)
            except BaseException:
                # Queued behind whatever the thread still runs (a BEGIN past its deadline
                # included), so the next transaction never starts inside this one; awaited
                # only until the transaction's deadline, past which it runs all the same.
                with contextlib.suppress(StoreError):  # keep the error that ended it
                    await writer.call(_rollback, within, until)
                raise
            await writer.call(_commit, within, until)

    async def run(self, plan: Plan[T]) -> T:
        async with self._write_lock:
            # _run_plan commits or rolls back by itself, even when it ends after the deadline.
            return await self._writer.call(lambda c: _run_plan(c, plan), self._timeout)

    async def fetchall(
        self, sql: str, params: Params = (), *, within: Timeout | None = None
    ) -> list[Row]:
        return await self._reader.call(
            lambda c: c.execute(sql, params).fetchall(), within or self._timeout
        )

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
                        conn = open_connection(self._path, self._pragmas)
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # the writer's safety net still checkpoints
                    log.debug("background checkpoint skipped: %s", exc)
        finally:
            if conn is not None:
                conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def open_connection(
    path: Path, pragmas: list[str], *, wal_within: float | None = None
) -> sqlite3.Connection:
    """A connection with its pragmas applied (and the file in WAL, given `wal_within`), or none
    at all: one whose set-up fails is closed, so it holds no lock while the caller retries.
    """
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        for pragma in pragmas:
            conn.execute(pragma)
        if wal_within is not None:
            ensure_wal(conn, path, wal_within)
    except BaseException:
        conn.close()
        raise
    return conn


def ensure_wal(conn: sqlite3.Connection, path: Path, within: float) -> None:
    """Switch the database file to WAL unless it already is (a plain read, no lock).

    The switch takes an exclusive lock, and SQLite does not call the busy handler for it while
    another connection holds the write lock (it could deadlock), so it is retried here until
    `within` seconds have passed, as busy_timeout would.
    """
    deadline = time.monotonic() + within
    while str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
        try:
            mode = str(conn.execute(WAL_PRAGMA).fetchone()[0]).lower()
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)
            continue
        if mode != "wal":
            raise sqlite3.OperationalError(
                f"cannot switch {path} to WAL (journal_mode stays {mode}); keep the "
                "database on a local file system that supports shared memory"
            )


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
