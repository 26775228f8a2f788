"""Brings a store's schema to the newest revision with Alembic."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from fieldbridge.errors import StoreError
from fieldbridge.store.sqlite import ensure_wal
from fieldbridge.store.urls import StoreUrl, mask_url

T = TypeVar("T")
MIGRATIONS = Path(__file__).parent / "migrations"
# Taken by every PostgreSQL migration, for its whole transaction: processes migrating one fresh
# database at once (CREATE TABLE/TYPE race on pg_type) wait, then find it done, as SQLite's
# BEGIN IMMEDIATE makes them. A constant apart from the journal's lock (store/journal.py).
MIGRATE_LOCK = 0x6669656C6D  # "fielm"


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def _engine(
    url: StoreUrl, *, ddl: bool, busy_timeout_ms: int, libpq_params: Mapping[str, str] | None
) -> sa.Engine:
    """An engine for reading the revision (`ddl=False`: takes no lock) or for migrating.

    On PostgreSQL `libpq_params` (connect timeout, keepalives) apply where the URL does not
    set the same keyword itself, as for the store's own connections.
    """
    if url.sqlite_path is None:
        given = psycopg.conninfo.conninfo_to_dict(url.libpq_url)
        extra = {k: v for k, v in (libpq_params or {}).items() if k not in given}
        return sa.create_engine(url.sqlalchemy_url, poolclass=sa.pool.NullPool, connect_args=extra)
    url.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(
        url.sqlalchemy_url,
        poolclass=sa.pool.NullPool,
        connect_args={"timeout": busy_timeout_ms / 1000},
    )
    if ddl:
        _transactional_sqlite_ddl(engine, url.sqlite_path, busy_timeout_ms / 1000)
    return engine


def _transactional_sqlite_ddl(engine: sa.Engine, path: Path, wal_within: float) -> None:
    """Run each migration as one SQLite transaction, DDL included.

    pysqlite only begins a transaction before DML, so every CREATE TABLE committed on its own
    and a crash during the first start left half a schema that no later start could migrate.
    This is SQLAlchemy's documented recipe for taking transaction control from the driver;
    IMMEDIATE makes a second process that migrates at the same time wait, then find it done.
    The database is switched to WAL before anything else, so that a write lock held by another
    process (a backup, the service) never blocks readers, from the very first start.
    """

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, connection_record: Any) -> None:
        dbapi_connection.isolation_level = None
        # WAL is kept in the file: set here, every later opener of the database finds it.
        ensure_wal(dbapi_connection, path, wal_within)

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


@cache
def head_revision() -> str:
    """The newest revision this package ships: what `upgrade` brings a store to."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    if head is None:
        raise StoreError(f"no schema revisions found in {MIGRATIONS}: the package is incomplete")
    return head


def pending_revisions(
    url: StoreUrl,
    *,
    busy_timeout_ms: int = 5000,
    libpq_params: Mapping[str, str] | None = None,
) -> list[str]:
    """Revisions not yet applied, oldest first. A plain read: it waits for no writer."""
    script = ScriptDirectory.from_config(_config())
    engine = _engine(url, ddl=False, busy_timeout_ms=busy_timeout_ms, libpq_params=libpq_params)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    except sa.exc.DBAPIError as exc:
        raise _unreachable(url, exc) from exc
    revs = [r.revision for r in script.iterate_revisions("head", current)]
    return list(reversed(revs))


def _unreachable(url: StoreUrl, exc: sa.exc.DBAPIError) -> StoreError:
    reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
    return StoreError(f"cannot migrate the store {mask_url(url.url)}: {reason}")


def upgrade(
    url: StoreUrl,
    on_step: Callable[[str], None] | None = None,
    *,
    busy_timeout_ms: int = 5000,
    libpq_params: Mapping[str, str] | None = None,
) -> list[str]:
    """Apply every pending revision; call on_step after each. Return what was applied.

    An up-to-date store is only read, so every CLI command (each migrates first) works beside
    another process holding the write lock; the write lock is taken only to migrate.
    """
    if not pending_revisions(url, busy_timeout_ms=busy_timeout_ms, libpq_params=libpq_params):
        return []
    applied: list[str] = []

    def step(**kwargs: Any) -> None:
        revision = str(kwargs["step"].up_revision_id)
        applied.append(revision)
        if on_step is not None:
            on_step(revision)

    cfg = _config()
    cfg.attributes["on_version_apply"] = step
    try:
        engine = _engine(url, ddl=True, busy_timeout_ms=busy_timeout_ms, libpq_params=libpq_params)
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Before Alembic reads the revision: a second migrator sees the first one's work.
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATE_LOCK})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except sa.exc.DBAPIError as exc:
        raise _unreachable(url, exc) from exc
    return applied


async def within(seconds: float, url: StoreUrl, work: Callable[[], T]) -> T:
    """Run blocking migration `work` (Alembic on a synchronous driver) under a deadline:
    StoreError naming store.migrate_timeout_s once `seconds` pass.

    A synchronous statement cannot be interrupted, and a proxy or network that stops passing
    bytes still acknowledges at TCP level, so no driver timeout ends it. The work runs on a
    daemon thread of its own (not the loop's executor, whose threads are joined at exit), so
    a process that gives up on a hung store can exit.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(value: T | None, error: BaseException | None) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(value)  # type: ignore[arg-type]

    def run() -> None:
        try:
            value, error = work(), None
        except BaseException as exc:  # handed to the waiting coroutine
            value, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(settle, value, error)

    threading.Thread(target=run, name="fieldbridge-migrate", daemon=True).start()
    try:
        return await asyncio.wait_for(asyncio.shield(done), seconds)
    except TimeoutError:
        raise StoreError(
            f"the store {mask_url(url.url)} did not answer the migration within {seconds:g} s "
            "(store.migrate_timeout_s); check that the database answers, then start again"
        ) from None
