"""Device liveness in the store, on both backends: silent devices go down past their own allowed
downtime, a message brings one up in its ingest commit, maintenance is left alone, operator
changes are kept as already notified, subscribers are added and removed, and a message being
committed while the check runs keeps its device current."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from fieldbridge.codecs.trapnet import build
from fieldbridge.ingest import Ingest
from fieldbridge.model import Accepted, DeviceStatus, NotifyChannel, Subscriber
from fieldbridge.store import Store, open_store
from tests.conftest import TABLES, eventually

T0 = 1_800_000_000.0
MIN = 60.0
CODEC = build({})


async def message(store: Store, node: str, at: float) -> None:
    body = f'{{"NodeID": "{node}", "VBat": 3.7}}'.encode()
    async with Ingest(store) as ingest:
        outcome = await ingest.submit("aklc", body, CODEC, {"topic": f"AKLC/Node/{node}"}, at)
    assert isinstance(outcome, Accepted), outcome


async def status(store: Store, node: str) -> DeviceStatus:
    device = await store.get_device(node)
    assert device is not None
    return device.status


def changes(history: list[Any]) -> list[tuple[str, str]]:
    return [(t.from_status.value, t.to_status.value) for t in reversed(history)]


async def test_each_device_has_its_own_allowed_downtime(store: Store) -> None:
    for node in ("Fast", "Slow", "Held"):
        await message(store, node, T0)
    await store.update_device("Slow", allowed_downtime_min=180)
    await store.update_device("Held", status=DeviceStatus.MAINTENANCE, at=T0 + 1)

    assert await store.mark_silent_down(T0 + 60 * MIN) == []  # not *past* 60 min yet
    made = await store.mark_silent_down(T0 + 61 * MIN, source="aklc")
    assert [(t.device, t.to_status, t.notified_at) for t in made] == [
        ("Fast", DeviceStatus.DOWN, None)
    ]
    assert "allowed 60 min" in made[0].reason
    assert await store.mark_silent_down(T0 + 62 * MIN) == []  # down once
    assert await store.mark_silent_down(T0 + 181 * MIN, source="another") == []  # not its source
    [slow] = await store.mark_silent_down(T0 + 181 * MIN)
    assert slow.device == "Slow" and "allowed 180 min" in slow.reason
    assert await status(store, "Held") is DeviceStatus.MAINTENANCE
    assert [t.device for t in await store.pending_transitions()] == ["Fast", "Slow"]
    assert [t.device for t in await store.pending_transitions(source="aklc")] == ["Fast", "Slow"]
    assert await store.pending_transitions(source="another") == []  # another monitor's network


async def test_a_message_brings_a_down_device_up_in_its_commit(store: Store) -> None:
    await message(store, "Trap1", T0)
    await message(store, "Kept", T0)
    await store.update_device("Kept", status=DeviceStatus.MAINTENANCE, at=T0 + 1)
    [down] = await store.mark_silent_down(T0 + 61 * MIN)
    await store.mark_notified(down.id, T0 + 61 * MIN)

    await message(store, "Trap1", T0 + 70 * MIN)
    await message(store, "Kept", T0 + 70 * MIN)  # maintenance: a message does not change it
    assert await status(store, "Trap1") is DeviceStatus.CURRENT
    assert await status(store, "Kept") is DeviceStatus.MAINTENANCE
    [up] = await store.pending_transitions()
    assert (up.device, up.from_status, up.to_status) == (
        "Trap1",
        DeviceStatus.DOWN,
        DeviceStatus.CURRENT,
    )
    assert up.at == T0 + 70 * MIN
    device = await store.get_device("Trap1")
    assert device is not None and device.status_since == T0 + 70 * MIN
    assert changes(await store.transitions("Trap1")) == [("current", "down"), ("down", "current")]
    # An operator's changes are history, notified already: nobody is told.
    assert changes(await store.transitions("Kept")) == [("current", "maintenance")]
    await store.update_device("Kept", status=DeviceStatus.CURRENT, at=T0 + 71 * MIN)
    assert [t.device for t in await store.pending_transitions()] == ["Trap1"]


async def test_subscribers_are_added_and_removed(store: Store) -> None:
    mail = Subscriber(NotifyChannel.EMAIL, "ranger@council.nz")
    text = Subscriber(NotifyChannel.SMS, "+64211234567")
    assert await store.set_subscribers("Trap1", add=[mail, text, mail]) == [mail, text]
    assert await store.set_subscribers("Trap1", add=[mail]) == [mail, text]  # once each
    assert await store.set_subscribers("Trap2", add=[text]) == [text]
    assert await store.set_subscribers("Trap1", remove=[mail]) == [text]
    assert await store.subscribers(["Trap1", "Trap2", "Trap3"]) == {
        "Trap1": [text],
        "Trap2": [text],
    }


async def test_a_message_committed_during_the_check_keeps_its_device_current(
    pg_url: str,
) -> None:
    """PostgreSQL only: SQLite's transactions are serial (BEGIN IMMEDIATE), so there a check
    and an ingest never overlap."""
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(f"TRUNCATE {TABLES} RESTART IDENTITY")
    async with open_store(pg_url) as store:
        await message(store, "Trap1", T0)
        await message(store, "Trap2", T0)
        # An ingest of a new Trap1 message: its row updated, the commit not made yet.
        with psycopg.connect(pg_url) as writer, psycopg.connect(pg_url, autocommit=True) as spy:
            writer.execute(
                "UPDATE devices SET last_seen = %s WHERE id = 'Trap1'", (T0 + 60.5 * MIN,)
            )
            check = asyncio.create_task(store.mark_silent_down(T0 + 61 * MIN))

            def check_waits_for_the_row() -> bool:
                row = spy.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND query LIKE 'UPDATE devices SET status%%'"
                ).fetchone()
                return row is not None and row[0] == 1

            await eventually(check_waits_for_the_row, "the check waits for Trap1's row")
            writer.commit()
        made = await check
        assert [t.device for t in made] == ["Trap2"]
        assert await status(store, "Trap1") is DeviceStatus.CURRENT
        assert await store.transitions("Trap1") == []
