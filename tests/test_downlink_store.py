"""The downlink queue of the store, on SQLite and PostgreSQL: queue, take, confirm, requeue."""

from __future__ import annotations

import asyncio

from fieldbridge.model import Decoded
from fieldbridge.store import Pending, Store, open_store

T0 = 1_700_000_000.0


async def test_queue_and_pending_oldest_first(store: Store) -> None:
    first = await store.queue_downlink("AA", b"\x01", {"origin": "cli", "fields": {"a": 1}})
    second = await store.queue_downlink("BB", b"\x02", {"origin": "thingworx"})
    third = await store.queue_downlink("AA", b"\x03", {"origin": "cli"})
    assert first < second < third
    pending = await store.pending_downlinks()
    assert [d.id for d in pending] == [first, second, third]
    only_aa = await store.pending_downlinks("AA")
    assert [(d.id, d.payload, d.state) for d in only_aa] == [
        (first, b"\x01", "queued"),
        (third, b"\x03", "queued"),
    ]
    assert only_aa[0].meta == {"origin": "cli", "fields": {"a": 1}}
    assert only_aa[0].sent_at is None and only_aa[0].confirmed_at is None


async def test_take_marks_sent_once_and_records_the_hash(store: Store) -> None:
    ids = [await store.queue_downlink("AA", bytes([i]), {"origin": "cli"}) for i in range(3)]
    await store.queue_downlink("BB", b"\x09", {})
    taken = await store.take_downlinks("AA", T0, known_hash=17)
    assert [d.id for d in taken] == ids
    assert all(d.state == "sent" and d.sent_at == T0 for d in taken)
    assert all(d.meta["sent_hash"] == 17 and d.meta["origin"] == "cli" for d in taken)
    assert await store.take_downlinks("AA", T0 + 1) == []
    # Sent but unconfirmed downlinks stay pending.
    assert [d.state for d in await store.pending_downlinks("AA")] == ["sent"] * 3
    assert [d.state for d in await store.pending_downlinks("BB")] == ["queued"]


async def test_take_uses_the_stored_configuration_hash_by_default(store: Store) -> None:
    config = Decoded("AA", kind="efento", attributes={"configuration_hash": 204})
    await store.commit([Pending("coap", T0, "{}", b"c", [config])])
    await store.queue_downlink("AA", b"\x01", {})
    (taken,) = await store.take_downlinks("AA", T0)
    assert taken.meta["sent_hash"] == 204


async def test_confirm_only_on_a_changed_hash(store: Store) -> None:
    did = await store.queue_downlink("AA", b"\x01", {"expect_hash_change": True})
    await store.take_downlinks("AA", T0, known_hash=5)
    assert await store.confirm_downlinks("AA", 5, T0 + 1) == 0  # same hash: not applied yet
    assert await store.confirm_downlinks("AA", None, T0 + 1) == 0  # a /i says nothing
    assert await store.confirm_downlinks("BB", 6, T0 + 1) == 0  # another device
    assert await store.confirm_downlinks("AA", 6, T0 + 2) == 1
    assert await store.pending_downlinks("AA") == []
    (done,) = await store.list_downlinks(device="AA")
    assert (done.id, done.state, done.confirmed_at) == (did, "confirmed", T0 + 2)


async def test_queued_downlinks_are_not_confirmed(store: Store) -> None:
    await store.queue_downlink("AA", b"\x01", {})
    assert await store.confirm_downlinks("AA", 99, T0) == 0
    assert [d.state for d in await store.pending_downlinks("AA")] == ["queued"]


async def test_request_only_downlink_is_confirmed_by_the_next_upload(store: Store) -> None:
    await store.queue_downlink("AA", b"\x30\x01", {"expect_hash_change": False})
    await store.take_downlinks("AA", T0, known_hash=5)
    assert await store.confirm_downlinks("AA", None, T0 + 1) == 1
    assert await store.pending_downlinks() == []


async def test_requeue_puts_sent_downlinks_back(store: Store) -> None:
    did = await store.queue_downlink("AA", b"\x01", {})
    await store.take_downlinks("AA", T0, known_hash=1)
    assert await store.requeue_downlinks([did, 12345]) == 1
    (again,) = await store.pending_downlinks("AA")
    assert (again.state, again.sent_at) == ("queued", None)
    assert [d.id for d in await store.take_downlinks("AA", T0 + 5)] == [did]
    assert await store.requeue_downlinks([]) == 0


async def test_concurrent_takers_never_share_a_downlink(store_url: str) -> None:
    async with open_store(store_url) as one, open_store(store_url) as two:
        ids = {await one.queue_downlink("AA", bytes([i]), {}) for i in range(20)}
        results = await asyncio.gather(
            *(s.take_downlinks("AA", T0) for s in (one, two, one, two)),
        )
    taken = [d.id for batch in results for d in batch]
    assert sorted(taken) == sorted(ids)
