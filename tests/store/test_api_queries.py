"""The store functions the REST API and the CLI share, on both stores: device search with
paging, readings by range with a key cursor, quarantine show/drop, downlink cancel, replay,
device changes and re-ingest."""

from __future__ import annotations

import pytest

from fieldbridge.codecs import http_json
from fieldbridge.ingest import Ingest
from fieldbridge.model import Decoded, DeviceStatus, DownlinkState, Reading
from fieldbridge.reingest import CannotReingest, reingest
from fieldbridge.sources.http import HttpSourceSettings
from fieldbridge.store import Pending, Store
from fieldbridge.store.devicechange import ChangeRefused, DeviceChange, change_device
from fieldbridge.store.registry import ReadingKey

T0 = 1_800_000_000.0


def message(device: str, at: float, *readings: Reading, kind: str = "probe") -> Pending:
    return Pending("http", at, "{}", b"{}", decoded=[Decoded(device, readings, kind=kind)])


async def test_devices_are_searched_filtered_and_paged(store: Store) -> None:
    await store.commit(
        [
            message("dev-a", T0, Reading("t", 1.0, T0)),
            message("dev_b", T0, Reading("t", 1.0, T0)),
            message("Weta-100%", T0, Reading("t", 1.0, T0), kind="trap"),
        ]
    )
    await store.update_device("dev-a", name="Gate TRAP")
    ids = [d.id for d in await store.search_devices()]
    assert ids == ["Weta-100%", "dev-a", "dev_b"]
    assert [d.id for d in await store.search_devices(q="trap")] == ["dev-a"]  # by name
    assert [d.id for d in await store.search_devices(q="weta")] == ["Weta-100%"]
    assert [d.id for d in await store.search_devices(q="100%")] == ["Weta-100%"]
    assert [d.id for d in await store.search_devices(q="v_")] == ["dev_b"]  # _ is literal
    assert [d.id for d in await store.search_devices(q="%")] == ["Weta-100%"]
    assert [d.id for d in await store.search_devices(kind="trap")] == ["Weta-100%"]
    assert await store.search_devices(status=DeviceStatus.DOWN) == []
    assert [d.id for d in await store.search_devices(source="http", after="Weta-100%")] == [
        "dev-a",
        "dev_b",
    ]
    assert [d.id for d in await store.search_devices(limit=1, after="dev-a")] == ["dev_b"]


async def test_readings_page_walks_a_range_in_time_order(store: Store) -> None:
    batch = [
        message("dev", T0 + i, Reading("t", float(i), T0 + i), Reading("h", 50.0, T0 + i))
        for i in range(5)
    ]
    await store.commit(batch)
    # two readings at one time and message: the key's seq keeps them apart
    values: list[tuple[str, float | None]] = []
    after: ReadingKey | None = None
    pages = 0
    while True:
        found, after = await store.readings_page("dev", after=after, limit=3)
        values += [(r.reading.quantity, r.reading.value) for r in found]
        pages += 1
        if after is None:
            break
    assert pages == 4 and len(values) == 10
    assert values[:4] == [("t", 0.0), ("h", 50.0), ("t", 1.0), ("h", 50.0)]
    window, more = await store.readings_page("dev", since=T0 + 1, until=T0 + 3, quantity="t")
    assert [r.reading.value for r in window] == [1.0, 2.0] and more is None
    assert (await store.readings_page("nobody"))[0] == []


async def test_quarantine_get_and_drop(store: Store) -> None:
    [outcome] = await store.commit(
        [Pending("http", T0, '{"path": "/x"}', b"\x00bad", reason="not JSON")]
    )
    qid = outcome.quarantine_id  # type: ignore[union-attr]
    kept = await store.get_quarantined(qid)
    assert kept is not None and kept.payload == b"\x00bad" and kept.meta == {"path": "/x"}
    assert [q.id for q in await store.list_quarantine(before=qid)] == []
    assert await store.drop_quarantined(qid) is True
    assert await store.get_quarantined(qid) is None
    assert await store.drop_quarantined(qid) is False


async def test_a_downlink_is_cancelled_while_queued_or_sent_only(store: Store) -> None:
    first = await store.queue_downlink("282C024156AF", b"\x01", origin="test")
    second = await store.queue_downlink("282C024156AF", b"\x02", origin="test")
    third = await store.queue_downlink("282C024156AF", b"\x03", origin="test")
    await store.take_downlinks("282C024156AF", T0)  # all three sent
    await store.confirm_downlinks("282C024156AF", None, T0)  # none expects no change: none
    cancelled = await store.cancel_downlink(second, "cancelled by test", T0 + 1)
    assert cancelled is not None and cancelled.state is DownlinkState.FAILED
    assert cancelled.failed_reason == "cancelled by test" and cancelled.failed_at == T0 + 1
    assert await store.cancel_downlink(second, "again") is None
    assert await store.cancel_downlink(999, "nothing") is None
    assert [d.id for d in await store.pending_downlinks()] == [first, third]
    assert [d.id for d in await store.list_downlinks(before=third)] == [second, first]
    got = await store.get_downlink(first)
    assert got is not None and got.state is DownlinkState.SENT


async def test_replay_from_an_id_or_a_time(store: Store) -> None:
    await store.commit([message("dev", T0 + i, Reading("t", 1.0, T0 + i)) for i in range(4)])
    asked = await store.replay("hook", from_id=2)
    assert (asked.from_id, asked.head_id, asked.messages) == (2, 4, 3)
    assert (await store.sink_state("hook")).replay_from == 1
    recent = await store.replay("hook", since=T0 + 3)
    assert (recent.from_id, recent.messages) == (4, 1)
    future = await store.replay("hook", since=T0 + 100)
    assert (future.from_id, future.messages) == (5, 0)
    with pytest.raises(ValueError):
        await store.replay("hook")


async def test_device_changes_follow_the_rules_of_devices_set(store: Store) -> None:
    await store.commit([message("dev", T0, Reading("t", 1.0, T0))])
    with pytest.raises(ChangeRefused, match="nothing to set"):
        await change_device(store, "dev", DeviceChange())
    with pytest.raises(ChangeRefused, match="goes down by itself"):
        await change_device(store, "dev", DeviceChange(status=DeviceStatus.DOWN))
    with pytest.raises(ChangeRefused, match="no such message type"):
        await change_device(store, "dev", DeviceChange(message_type="nope"))
    assert await change_device(store, "nobody", DeviceChange(name="x")) is None
    changed = await change_device(
        store,
        "dev",
        DeviceChange(
            flags={"upload_trapnz": True},
            location={"latitude": -36.8, "longitude": 174.8},
            status=DeviceStatus.MAINTENANCE,
        ),
    )
    assert changed is not None and changed.flags == {"upload_trapnz": True}
    assert changed.attributes["location_override"] == {"latitude": -36.8, "longitude": 174.8}
    assert changed.status is DeviceStatus.MAINTENANCE
    cleared = await change_device(store, "dev", DeviceChange(remove_location=True))
    assert cleared is not None and "location_override" not in cleared.attributes


async def test_reingest_stores_a_payload_today_s_codec_decodes(store: Store) -> None:
    good = b'{"device": "late-1", "readings": {"temperature": 7.5}}'
    outcomes = await store.commit(
        [
            Pending("http", T0, "{}", good, reason="an older codec refused it"),
            Pending("http", T0, "{}", b"not json", reason="not JSON"),
            Pending("gone", T0, "{}", good, reason="from a source since removed"),
        ]
    )
    fixed, bad, orphan = (o.quarantine_id for o in outcomes)  # type: ignore[union-attr]
    sources = [("http", HttpSourceSettings(name="http"))]
    async with Ingest(store, flush_ms=1.0) as ingest:
        done = await reingest(store, ingest, sources, fixed)
        assert done.source == "http" and len(done.message_ids) == 1
        [entry] = await store.journal_by_ids(list(done.message_ids))
        assert entry.device == "late-1" and entry.received_at == T0
        with pytest.raises(CannotReingest) as refused:
            await reingest(store, ingest, sources, bad)
        assert refused.value.code == "still_refused"
        with pytest.raises(CannotReingest) as unknown:
            await reingest(store, ingest, sources, orphan)
        assert unknown.value.code == "unknown_source"
        with pytest.raises(CannotReingest) as missing:
            await reingest(store, ingest, sources, fixed)
        assert missing.value.code == "not_found"
    assert sorted(q.id for q in await store.list_quarantine()) == [bad, orphan]
    assert HttpSourceSettings(name="http").payload_codec() is http_json.decode
