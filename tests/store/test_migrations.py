"""Alembic migrations build exactly the schema of store/schema.py, and SQLite runs durably."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from fieldbridge.model import Decoded, DownlinkState, Reading
from fieldbridge.store import Pending, Store, open_store, parse_store_url
from fieldbridge.store.migrate import MIGRATIONS, head_revision, pending_revisions, upgrade
from fieldbridge.store.schema import metadata
from tests.conftest import PG_ADMIN, wait_until


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store URL whose database has no schema at all, on each backend in turn."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    name = f"fieldbridge_migrate_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql://postgres@127.0.0.1:5432/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def all_revisions() -> list[str]:
    script = ScriptDirectory(str(MIGRATIONS))
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def _unquoted(default: str | None) -> str | None:
    if default is None:
        return None
    return re.sub(r"^\"?'(.*)'\"?$", r"\1", re.sub(r"^\((.*)\)$", r"\1", default))


def _sqlite_default_differs(
    context: MigrationContext,
    inspected_column: Any,
    metadata_column: Any,
    inspected_default: str | None,
    metadata_default: Any,
    rendered_metadata_default: str | None,
) -> bool | None:
    # Alembic's SQLite comparison does not unquote an empty string ('' vs ''), a false
    # difference for dead_letters.body; compare unquoted texts instead. None = Alembic decides.
    if context.dialect.name != "sqlite":
        return None
    return _unquoted(inspected_default) != _unquoted(rendered_metadata_default)


def schema_differences(url: str) -> list[Any]:
    engine = sa.create_engine(parse_store_url(url).sqlalchemy_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn,
                opts={"compare_type": True, "compare_server_default": _sqlite_default_differs},
            )
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def test_upgrade_builds_exactly_the_declared_schema(empty_url: str) -> None:
    url = parse_store_url(empty_url)
    assert pending_revisions(url) == all_revisions()
    assert upgrade(url) == all_revisions()
    assert schema_differences(empty_url) == []
    assert pending_revisions(url) == []


def test_upgrade_twice_is_a_no_op(empty_url: str) -> None:
    url = parse_store_url(empty_url)
    upgrade(url)
    assert upgrade(url) == []
    assert pending_revisions(url) == []
    assert schema_differences(empty_url) == []


async def test_the_store_reports_the_revision_upgrade_reached(empty_url: str) -> None:
    applied = upgrade(parse_store_url(empty_url))
    assert applied[-1] == head_revision() == all_revisions()[-1]
    async with open_store(empty_url) as store:
        assert await store.schema_revision() == head_revision()


def run_sql(url: str, sql: str) -> None:
    engine = sa.create_engine(parse_store_url(url).sqlalchemy_url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(sql)
    finally:
        engine.dispose()


def test_comparison_notices_a_drifted_schema(store_url: str) -> None:
    # The checks above would be worthless if compare_metadata saw nothing: make it see something.
    run_sql(store_url, "CREATE INDEX ix_drift ON devices (name)")
    try:
        differences = schema_differences(store_url)
    finally:
        run_sql(store_url, "DROP INDEX ix_drift")
    assert [d[0] for d in differences] == ["remove_index"]
    assert differences[0][1].name == "ix_drift"
    assert schema_differences(store_url) == []


async def touch(store: Store) -> None:
    """One committed message, so the writer connection is open and configured."""
    await store.commit(
        [Pending("http", 1.0, "{}", b"x", decoded=[Decoded("d", (Reading("t", 1.0, 1.0),))])]
    )


async def writer_pragma(store: Store, name: str) -> object:
    async with store.db.transaction() as tx:
        rows = await tx.fetchall(f"PRAGMA {name}")
    return rows[0][0]


async def test_sqlite_store_runs_in_wal_with_synchronous_full(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'durable.db'}"
    upgrade(parse_store_url(url))
    async with open_store(url) as store:
        await touch(store)
        assert await writer_pragma(store, "synchronous") == 2  # FULL
        assert await writer_pragma(store, "journal_mode") == "wal"
    # WAL is a property of the file: any later connection sees it.
    path = parse_store_url(url).sqlite_path
    assert path is not None
    with sqlite3.connect(path) as other:
        assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_sqlite_synchronous_is_configurable(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fast.db'}"
    upgrade(parse_store_url(url))
    async with open_store(url, synchronous="normal") as store:
        await touch(store)
        assert await writer_pragma(store, "synchronous") == 1  # NORMAL


def alembic(url: str, action: str, revision: str) -> None:
    """Run `alembic upgrade|downgrade <revision>` on a store, as the migration tests need."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    engine = sa.create_engine(parse_store_url(url).sqlalchemy_url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            getattr(command, action)(cfg, revision)
    finally:
        engine.dispose()


def downlink_metas(url: str) -> list[dict[str, Any]]:
    engine = sa.create_engine(parse_store_url(url).sqlalchemy_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT meta FROM downlinks ORDER BY id").all()
    finally:
        engine.dispose()
    return [json.loads(meta) for (meta,) in rows]


# Downlinks as fieldbridge wrote them before revision 0003: retry state in meta.
OLD_DOWNLINKS = [
    ("queued", {"origin": "cli", "fields": {"transmission_interval": 900},
                "expect_hash_change": True}),
    ("sent", {"origin": "thingworx", "sink": "twx", "message_id": 7, "fields": {"ackInterval": 60},
              "expect_hash_change": False, "sent_hash": 4294967295, "attempts": 2}),
    ("failed", {"sent_hash": 7, "attempts": 3, "failed": "configuration hash still 7 after 3 sends",
                "failed_at": 1700000000.5}),
    ("queued", {}),
]  # fmt: skip


async def test_0003_moves_downlink_meta_keys_into_columns_and_back(empty_url: str) -> None:
    alembic(empty_url, "upgrade", "0002")
    engine = sa.create_engine(parse_store_url(empty_url).sqlalchemy_url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            for state, meta in OLD_DOWNLINKS:
                conn.execute(
                    sa.text(
                        "INSERT INTO downlinks (device, payload, state, meta, created_at) "
                        "VALUES ('AA', :payload, :state, :meta, 1.0)"
                    ),
                    {"payload": b"\x01", "state": state, "meta": json.dumps(meta)},
                )
    finally:
        engine.dispose()

    upgrade(parse_store_url(empty_url))
    assert schema_differences(empty_url) == []
    async with open_store(empty_url) as store:
        queued, sent, failed, bare = reversed(await store.list_downlinks())
    assert (queued.state, queued.origin, queued.fields) == (
        DownlinkState.QUEUED,
        "cli",
        {"transmission_interval": 900},
    )
    assert (queued.expect_hash_change, queued.attempts, queued.sent_hash) == (True, 0, None)
    assert queued.meta == {}
    assert (sent.origin, sent.fields, sent.expect_hash_change) == (
        "thingworx",
        {"ackInterval": 60},
        False,
    )
    assert (sent.attempts, sent.sent_hash, sent.meta) == (
        2,
        4294967295,
        {"sink": "twx", "message_id": 7},
    )
    assert (failed.state, failed.attempts, failed.sent_hash) == (DownlinkState.FAILED, 3, 7)
    assert (failed.failed_reason, failed.failed_at) == (
        "configuration hash still 7 after 3 sends",
        1700000000.5,
    )
    assert (bare.origin, bare.fields, bare.expect_hash_change, bare.attempts) == (
        None,
        None,
        None,
        0,
    )

    alembic(empty_url, "downgrade", "0002")
    assert downlink_metas(empty_url) == [meta for _, meta in OLD_DOWNLINKS]


# --- concurrent migrations ------------------------------------------------------------------

RACERS = 5
RACE_ATTEMPTS = 3  # the race failed about 1 in 5 before the advisory lock
RACER = """
import sys, time
from pathlib import Path
from fieldbridge.store import parse_store_url
from fieldbridge.store.migrate import upgrade

url, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
ready.touch()
deadline = time.monotonic() + 60
while not go.exists() and time.monotonic() < deadline:  # a barrier: every racer is imported
    time.sleep(0.002)
print(",".join(upgrade(parse_store_url(url))))
"""


def race_upgrades(url: str, workdir: Path) -> list[tuple[int, str, str]]:
    """Run `upgrade` in RACERS processes released at the same moment; (exit, out, err) each."""
    go = workdir / "go"
    ready = [workdir / f"ready-{i}" for i in range(RACERS)]
    racers: list[subprocess.Popen[str]] = []
    try:
        for path in ready:
            racers.append(
                subprocess.Popen(
                    [sys.executable, "-c", RACER, url, str(path), str(go)],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        wait_until(lambda: all(p.exists() for p in ready), "every racer to start", timeout=60)
        go.touch()
        outputs = [racer.communicate(timeout=60) for racer in racers]
        return [(r.returncode, out, err) for r, (out, err) in zip(racers, outputs, strict=True)]
    finally:
        for racer in racers:
            if racer.poll() is None:
                racer.kill()
                racer.wait()


@pytest.mark.parametrize("attempt", range(RACE_ATTEMPTS))
def test_processes_migrating_a_fresh_postgresql_database_at_once_all_succeed(
    tmp_path: Path, attempt: int
) -> None:
    name = f"fieldbridge_race_{uuid.uuid4().hex[:12]}"
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            results = race_upgrades(url, tmp_path)
            assert [code for code, _, _ in results] == [0] * RACERS, [
                e[-2000:] for *_, e in results
            ]
            # One racer migrated; the others waited for its lock, then found nothing to do.
            applied = sorted(out.strip() for _, out, _ in results)
            assert applied == [""] * (RACERS - 1) + [",".join(all_revisions())]
            assert schema_differences(url) == []
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
