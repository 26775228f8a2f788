"""What the console reads from the store: ingest rate, device search, a quantity over time,
and a replay from a time; on both backends."""

from __future__ import annotations

from fieldbridge.model import Decoded, DeviceStatus, Reading
from fieldbridge.store import Pending, Store
from fieldbridge.store.activity import IngestBucket, Point
from fieldbridge.store.sinkstate import Replay

T0 = 1_800_000_000.0  # a multiple of 60


def message(source: str, device: str, at: float, *readings: Reading, kind: str = "k") -> Pending:
    decoded = Decoded(device=device, readings=tuple(readings), kind=kind)
    return Pending(source, at, "{}", b"{}", decoded=[decoded])


async def test_ingest_rate_counts_messages_per_source_and_bucket(store: Store) -> None:
    await store.commit(
        [
            message("mqtt", "a", T0 - 1),  # before the window
            message("mqtt", "a", T0 + 1),
            message("mqtt", "b", T0 + 59.9),
            message("http", "c", T0 + 30),
            message("mqtt", "a", T0 + 61),
        ]
    )
    assert await store.ingest_rate(T0, 60) == [
        IngestBucket("http", T0, 1),
        IngestBucket("mqtt", T0, 2),
        IngestBucket("mqtt", T0 + 60, 1),
    ]
    assert await store.ingest_rate(T0 + 120, 60) == []


async def test_search_finds_devices_by_any_part_of_id_name_kind_or_source(store: Store) -> None:
    await store.commit(
        [
            message("mqtt", "282C024156AF", T0, kind="efento"),
            message("http", "kit_1", T0, kind="smartcitizen"),
            message("http", "kit%2", T0, kind="smartcitizen"),
        ]
    )
    await store.update_device("kit_1", name="Orchard North")

    async def ids(text: str) -> list[str]:
        return [d.id for d in await store.find_devices(text)]

    assert await ids("2c02") == ["282C024156AF"]
    assert await ids("EFENTO") == ["282C024156AF"]
    assert await ids("orchard") == ["kit_1"]
    assert await ids("kit") == ["kit%2", "kit_1"]
    assert await ids("t_") == ["kit_1"]  # LIKE wildcards are plain characters here
    assert await ids("t%") == ["kit%2"]
    assert await ids("mqtt") == ["282C024156AF"]
    assert len(await ids("")) == 3
    assert await store.device_status_counts() == {"current": 3}
    await store.update_device("kit%2", status=DeviceStatus.MAINTENANCE)
    found = await store.find_devices("kit", status=DeviceStatus.MAINTENANCE)
    assert [d.id for d in found] == ["kit%2"]
    assert await store.device_status_counts() == {"current": 2, "maintenance": 1}


async def test_quantity_points_in_a_range_by_channel(store: Store) -> None:
    await store.commit(
        [
            message(
                "http",
                "d",
                T0,
                Reading("t", 20.0, T0, 0, "C"),
                Reading("t", 21.0, T0, 1, "C"),
                Reading("h", 50.0, T0),
            ),
            message("http", "d", T0 + 60, Reading("t", None, T0 + 60, 0, "C")),
            message("http", "d", T0 + 120, Reading("t", 22.0, T0 + 120, 0, "C")),
            message("http", "other", T0, Reading("x", 1.0, T0)),
        ]
    )
    assert await store.device_quantities("d", T0, T0 + 121) == ["h", "t"]
    assert await store.device_quantities("d", T0 + 1, T0 + 121) == ["t"]
    assert await store.quantity_points("d", "t", T0, T0 + 120) == [
        Point(T0, 20.0, 0, "C"),
        Point(T0, 21.0, 1, "C"),
        Point(T0 + 60, None, 0, "C"),
    ]
    # Over the limit: the latest ones.
    assert await store.quantity_points("d", "t", T0, T0 + 121, limit=1) == [
        Point(T0 + 120, 22.0, 0, "C")
    ]


async def test_replay_from_a_time_asks_for_the_messages_from_then_on(store: Store) -> None:
    await store.commit([message("http", "d", T0 + i * 10) for i in range(5)])  # ids 1..5
    assert await store.replay("hook", since=T0 + 15) == Replay("hook", 3, 5, 3)
    assert (await store.sink_state("hook")).replay_from == 2
    assert await store.take_replay("hook") == 2
    # A time after the last message: nothing to send again, the cursor goes to the head.
    assert await store.replay("hook", since=T0 + 1000) == Replay("hook", 6, 5, 0)
    assert (await store.sink_state("hook")).replay_from == 5
