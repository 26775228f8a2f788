"""The downlink queue of the store, on SQLite and PostgreSQL: queue, take, confirm, requeue."""

from __future__ import annotations

import asyncio

from fieldbridge.model import Decoded, DownlinkState
from fieldbridge.store import Pending, Store, open_store

T0 = 1_700_000_000.0


async def test_queue_and_pending_oldest_first(store: Store) -> None:
    first = await store.queue_downlink(
        "AA", b"\x01", origin="cli", fields={"a": 1}, meta={"note": "x"}
    )
    second = await store.queue_downlink("BB", b"\x02", origin="thingworx")
    third = await store.queue_downlink("AA", b"\x03", origin="cli")
    assert first < second < third
    pending = await store.pending_downlinks()
    assert [d.id for d in pending] == [first, second, third]
    only_aa = await store.pending_downlinks("AA")
    assert [(d.id, d.payload, d.state) for d in only_aa] == [
        (first, b"\x01", "queued"),
        (third, b"\x03", "queued"),
    ]
    assert (only_aa[0].origin, only_aa[0].fields, only_aa[0].meta) == (
        "cli",
        {"a": 1},
        {"note": "x"},
    )
    assert (only_aa[0].expect_hash_change, only_aa[0].attempts, only_aa[0].sent_hash) == (
        None,
        0,
        None,
    )
    assert only_aa[0].sent_at is None and only_aa[0].confirmed_at is None
    assert (only_aa[1].fields, only_aa[1].meta) == (None, {})


async def test_take_marks_sent_once_and_records_the_hash(store: Store) -> None:
    ids = [await store.queue_downlink("AA", bytes([i]), origin="cli") for i in range(3)]
    await store.queue_downlink("BB", b"\x09")
    taken = await store.take_downlinks("AA", T0, known_hash=17)
    assert [d.id for d in taken] == ids
    assert all(d.state == "sent" and d.sent_at == T0 for d in taken)
    assert all(d.sent_hash == 17 and d.origin == "cli" and d.attempts == 1 for d in taken)
    assert await store.pending_downlinks("AA") == taken  # what take returned is what is stored
    assert await store.take_downlinks("AA", T0 + 1) == []
    # Sent but unconfirmed downlinks stay pending.
    assert [d.state for d in await store.pending_downlinks("AA")] == ["sent"] * 3
    assert [d.state for d in await store.pending_downlinks("BB")] == ["queued"]


async def test_take_keeps_the_hash_it_is_given_and_counts_attempts(store: Store) -> None:
    # The store knows no device protocol: the hash is whatever the source passes, or none.
    did = await store.queue_downlink("AA", b"\x01")
    config = Decoded("AA", kind="efento", attributes={"configuration_hash": 204})
    await store.commit([Pending("coap", T0, "{}", b"c", [config])])
    (taken,) = await store.take_downlinks("AA", T0)
    assert (taken.sent_hash, taken.attempts, taken.expect_hash_change) == (None, 1, None)
    await store.requeue_downlinks([did])
    (again,) = await store.take_downlinks("AA", T0 + 1, known_hash=9, expects_change=bool)
    assert (again.sent_hash, again.attempts, again.expect_hash_change) == (9, 2, True)
    assert await store.pending_downlinks("AA") == [again]


async def test_expects_change_fills_in_only_what_the_queuer_left_out(store: Store) -> None:
    await store.queue_downlink("AA", b"\x01", expect_hash_change=True)
    await store.queue_downlink("AA", b"", expect_hash_change=None)
    taken = await store.take_downlinks("AA", T0, expects_change=lambda payload: False)
    assert [d.expect_hash_change for d in taken] == [True, False]


async def test_fail_records_the_reason_and_time(store: Store) -> None:
    did = await store.queue_downlink("AA", b"\x01")
    assert await store.fail_downlinks([did], "not sent yet", T0) == 0  # only sent ones fail
    await store.take_downlinks("AA", T0, known_hash=3)
    assert await store.fail_downlinks([did, 12345], "hash still 3", T0 + 1) == 1
    (gone,) = await store.list_downlinks(device="AA", state=DownlinkState.FAILED)
    assert (gone.state, gone.failed_reason, gone.failed_at) == ("failed", "hash still 3", T0 + 1)
    assert await store.pending_downlinks() == []


async def test_confirm_only_on_a_changed_hash(store: Store) -> None:
    did = await store.queue_downlink("AA", b"\x01", expect_hash_change=True)
    await store.take_downlinks("AA", T0, known_hash=5)
    assert await store.confirm_downlinks("AA", 5, T0 + 1) == 0  # same hash: not applied yet
    assert await store.confirm_downlinks("AA", None, T0 + 1) == 0  # a /i says nothing
    assert await store.confirm_downlinks("BB", 6, T0 + 1) == 0  # another device
    assert await store.confirm_downlinks("AA", 6, T0 + 2) == 1
    assert await store.pending_downlinks("AA") == []
    (done,) = await store.list_downlinks(device="AA")
    assert (done.id, done.state, done.confirmed_at) == (did, "confirmed", T0 + 2)


async def test_queued_downlinks_are_not_confirmed(store: Store) -> None:
    await store.queue_downlink("AA", b"\x01")
    assert await store.confirm_downlinks("AA", 99, T0) == 0
    assert [d.state for d in await store.pending_downlinks("AA")] == ["queued"]


async def test_request_only_downlink_is_confirmed_by_the_next_upload(store: Store) -> None:
    await store.queue_downlink("AA", b"\x30\x01", expect_hash_change=False)
    await store.take_downlinks("AA", T0, known_hash=5)
    assert await store.confirm_downlinks("AA", None, T0 + 1) == 1
    assert await store.pending_downlinks() == []


async def test_requeue_puts_sent_downlinks_back(store: Store) -> None:
    did = await store.queue_downlink("AA", b"\x01")
    await store.take_downlinks("AA", T0, known_hash=1)
    assert await store.requeue_downlinks([did, 12345]) == 1
    (again,) = await store.pending_downlinks("AA")
    assert (again.state, again.sent_at) == ("queued", None)
    assert [d.id for d in await store.take_downlinks("AA", T0 + 5)] == [did]
    assert await store.requeue_downlinks([]) == 0


async def test_concurrent_takers_never_share_a_downlink(store_url: str) -> None:
    async with open_store(store_url) as one, open_store(store_url) as two:
        ids = {await one.queue_downlink("AA", bytes([i])) for i in range(20)}
        results = await asyncio.gather(
            *(s.take_downlinks("AA", T0) for s in (one, two, one, two)),
        )
    taken = [d.id for batch in results for d in batch]
    assert sorted(taken) == sorted(ids)
