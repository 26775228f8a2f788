"""SQLite under another process's write lock: readers never wait, writers wait busy_timeout_ms."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import orjson
from aiocoap.numbers.codes import Code

from fieldbridge.codecs.http_json import decode
from fieldbridge.ingest import Ingest
from fieldbridge.model import Accepted
from fieldbridge.store import open_store, parse_store_url
from fieldbridge.store.migrate import upgrade
from tests.support.coap_harness import serve
from tests.support.efento_sim import measurements, serial_bytes
from tests.support.locks import WriteLockHolder
from tests.support.processes import run_cli

HOLD = 1.5  # seconds the other process keeps the write lock: well under busy_timeout_ms


def migrated(tmp_path: Path) -> Path:
    db = tmp_path / "locks.db"
    upgrade(parse_store_url(f"sqlite:///{db}"))
    return db


def journal_mode(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        conn.close()


def body(n: int) -> bytes:
    return orjson.dumps({"device": f"lock-{n}", "readings": {"t": n}, "id": f"lock-{n}"})


def test_a_migrated_database_is_in_wal_mode(tmp_path: Path) -> None:
    # WAL is what lets readers go on beside a writer; it must hold before the service writes.
    assert journal_mode(migrated(tmp_path)) == "wal"


async def test_readers_are_not_blocked_by_a_write_lock_before_the_first_write(
    tmp_path: Path,
) -> None:
    db = migrated(tmp_path)
    config = tmp_path / "fb.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{db}"\n')
    async with open_store(f"sqlite:///{db}", busy_timeout_ms=9000) as store:
        with WriteLockHolder(db):
            started = time.monotonic()
            rows = await store.db.fetchall("SELECT count(*) FROM journal")
            assert rows[0][0] == 0
            ro = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0)
            try:
                assert ro.execute("SELECT count(*) FROM devices").fetchone()[0] == 0
            finally:
                ro.close()
            assert time.monotonic() - started < 1.0, "a reader waited for the writer"
            listed = await asyncio.to_thread(run_cli, "devices", "list", "--json", config=config)
            assert listed.returncode == 0, listed.stderr
            assert orjson.loads(listed.stdout) == []


async def test_a_write_lock_shorter_than_busy_timeout_delays_commits_and_fails_none(
    tmp_path: Path,
) -> None:
    db = migrated(tmp_path)
    async with (
        open_store(f"sqlite:///{db}", busy_timeout_ms=9000) as store,
        Ingest(store) as ingest,
    ):
        with WriteLockHolder(db) as holder:
            # The very first writes after start, while the lock is held.
            sent = [
                asyncio.create_task(ingest.submit("http", body(n), decode, {})) for n in range(20)
            ]
            started = time.monotonic()
            await asyncio.sleep(HOLD)  # a window in which no commit may finish (nor fail)
            assert not any(task.done() for task in sent), "a commit finished under the lock"
            holder.release()
        outcomes = await asyncio.wait_for(asyncio.gather(*sent), 20)
        assert time.monotonic() - started >= HOLD
        assert all(isinstance(o, Accepted) for o in outcomes), outcomes
        rows = await store.db.fetchall("SELECT count(*) FROM journal")
        assert rows[0][0] == 20


async def test_a_rollback_journal_database_is_switched_to_wal_within_busy_timeout(
    tmp_path: Path,
) -> None:
    """A database left in rollback-journal mode (made before migrations set WAL) is converted
    by the service's writer, which waits for another process's lock instead of failing."""
    db = migrated(tmp_path)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()
    async with (
        open_store(f"sqlite:///{db}", busy_timeout_ms=9000) as store,
        Ingest(store) as ingest,
    ):
        with WriteLockHolder(db) as holder:
            first = asyncio.create_task(ingest.submit("http", body(1), decode, {}))
            await asyncio.sleep(HOLD)  # a window in which the first commit may not fail
            assert not first.done(), "the first commit did not wait for the lock"
            holder.release()
        assert isinstance(await asyncio.wait_for(first, 20), Accepted)
    assert journal_mode(db) == "wal"


async def test_the_first_coap_frame_after_start_waits_for_the_lock(tmp_path: Path) -> None:
    db = migrated(tmp_path)
    async with serve(db, busy_timeout_ms=9000) as h:
        with WriteLockHolder(db) as holder:
            loop = asyncio.get_running_loop()
            loop.call_later(HOLD, holder.release)
            answer = await asyncio.wait_for(
                h.post("m", measurements(serial_bytes(0x0A0B), 1_700_000_000)), 30
            )
        assert answer.code == Code.CREATED, answer
