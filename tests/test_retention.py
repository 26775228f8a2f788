"""Retention never deletes what a sink known to the store has not delivered (both backends)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from fieldbridge.app import Service
from fieldbridge.config import Settings, load_settings
from fieldbridge.retention import prune_once
from fieldbridge.store import Store
from tests.conftest import eventually
from tests.store.test_store import accepted, count, payload, record
from tests.support.processes import to_toml

DAY = 86400.0
OLD = time.time() - 10 * DAY  # past the retention_days = 1 of every settings file here
START_TIMEOUT = 30.0  # seconds; only guards against a hang


def settings_with(tmp_path: Path, store_url: str, sinks: list[dict[str, Any]]) -> Settings:
    config: dict[str, Any] = {
        "store": {"url": store_url, "retention_days": 1, "readings_retention_days": 1},
        "http": {"enabled": False},
    }
    if sinks:
        config["sinks"] = {"webhook": [{"url": "http://127.0.0.1:9/hook", **s} for s in sinks]}
    path = tmp_path / "fieldbridge.toml"
    path.write_text(to_toml(config))
    return load_settings(path)


async def old_messages(store: Store, n: int = 100) -> list[int]:
    """`n` messages received (and measured) ten days ago; their journal ids."""
    batch = [payload(record(value=float(i), at=OLD), at=OLD) for i in range(n)]
    return [o.ids[0] for o in await accepted(store, batch)]


async def journal_ids(store: Store) -> list[int]:
    return [e.id for e in await store.read_journal(0, 1000)]


async def test_a_disabled_sink_holds_back_what_it_never_delivered(
    store: Store, store_url: str, tmp_path: Path
) -> None:
    settings = settings_with(tmp_path, store_url, [{"name": "off", "enabled": False}])
    ids = await old_messages(store)
    await store.save_progress("off", cursor=ids[49], state="idle", last_error=None)

    report = await prune_once(settings, store)

    assert (report.journal, report.readings) == (50, 50)
    assert await journal_ids(store) == ids[50:]
    assert await count(store, "readings") == 50
    (hold,) = report.sinks
    assert (hold.name, hold.configured, hold.enabled, hold.cursor) == ("off", True, False, ids[49])
    assert hold.held_back == 50


async def test_a_configured_sink_that_never_ran_holds_back_everything(
    store: Store, store_url: str, tmp_path: Path
) -> None:
    settings = settings_with(
        tmp_path, store_url, [{"name": "new"}, {"name": "new-off", "enabled": False}]
    )
    ids = await old_messages(store, 10)
    await store.save_progress("new", cursor=ids[-1], state="idle", last_error=None)
    report = await prune_once(settings, store)
    assert report.journal == 0  # "new-off" has no stored state: cursor 0
    assert await journal_ids(store) == ids


async def test_a_sink_removed_from_the_settings_holds_back_until_forgotten(
    store: Store, store_url: str, tmp_path: Path
) -> None:
    settings = settings_with(tmp_path, store_url, [])  # "gone" was in an older settings file
    ids = await old_messages(store)
    await store.save_progress("gone", cursor=ids[49], state="idle", last_error=None)
    await store.add_dead_letter("gone", ids[10], 400, "refused")

    report = await prune_once(settings, store)
    assert report.journal == 49  # 1..50 less the dead letter
    assert await journal_ids(store) == [ids[10], *ids[50:]]
    (hold,) = report.sinks
    assert (hold.name, hold.configured, hold.held_back) == ("gone", False, 50)

    assert await store.forget_sink("gone") == (True, 1)
    assert await store.forget_sink("gone") == (False, 0)
    report = await prune_once(settings, store)
    assert report.sinks == ()
    assert report.journal == 51
    assert await journal_ids(store) == []


async def test_a_pending_replay_holds_back_from_where_it_starts(
    store: Store, store_url: str, tmp_path: Path
) -> None:
    settings = settings_with(tmp_path, store_url, [{"name": "hook"}])
    ids = await old_messages(store, 10)
    await store.save_progress("hook", cursor=ids[-1], state="idle", last_error=None)
    await store.request_replay("hook", ids[3])
    assert (await prune_once(settings, store)).journal == 4
    assert await journal_ids(store) == ids[4:]


async def test_with_no_sinks_rows_go_by_age_alone(
    store: Store, store_url: str, tmp_path: Path
) -> None:
    settings = settings_with(tmp_path, store_url, [])
    ids = await old_messages(store, 20)
    now = time.time()
    (fresh,) = await accepted(store, [payload(record(at=now), at=now)])

    report = await prune_once(settings, store)

    assert (report.journal, report.readings, report.sinks) == (20, 20, ())
    assert report.delivered_upto == fresh.ids[0]
    assert await journal_ids(store) == [fresh.ids[0]]
    assert ids[-1] < fresh.ids[0]


async def test_a_dry_run_removes_nothing_and_says_what_would_go(
    store: Store, store_url: str, tmp_path: Path
) -> None:
    settings = settings_with(tmp_path, store_url, [{"name": "hook"}])
    ids = await old_messages(store)
    await store.save_progress("hook", cursor=ids[49], state="idle", last_error=None)

    dry = await prune_once(settings, store, dry_run=True)
    assert (dry.dry_run, dry.journal, dry.readings) == (True, 50, 50)
    assert await journal_ids(store) == ids
    assert await count(store, "readings") == 100

    done = await prune_once(settings, store)
    assert (done.journal, done.readings) == (dry.journal, dry.readings)


async def test_the_service_prunes_soon_after_it_starts(
    store: Store, store_url: str, tmp_path: Path
) -> None:
    # A machine up for a few minutes must prune too (it did only after an hour of uptime).
    settings = settings_with(tmp_path, store_url, [{"name": "off", "enabled": False}])
    ids = await old_messages(store)
    await store.save_progress("off", cursor=ids[49], state="idle", last_error=None)

    service = Service(settings, first_prune_after=0.2)
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(service.run(stop, ready))
    try:
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait(
            {task, waiter}, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        waiter.cancel()
        if task.done():
            await task  # raises what stopped it
        assert ready.is_set(), "the service did not start in time"

        async def pruned() -> bool:
            return await journal_ids(store) == ids[50:]

        await eventually(pruned, "the first retention pass")
    finally:
        stop.set()
        await asyncio.wait_for(task, 15.0)
