"""The InfluxDB sink's fast paths: readings read as plain rows (`read_journal(rows=True)`) or
packed in the journal row (`read_journal(readings=False)`, rows for the messages not packed),
rendered straight into text, give exactly the lines the Reading path gives, on both store
backends; requests keep each series in one lane, in order."""

from __future__ import annotations

import gzip
import math
from dataclasses import replace

import httpx
import pytest

from fieldbridge.model import JournalEntry, Reading
from fieldbridge.sinks.influxdb import InfluxDBDestination, plan_requests
from fieldbridge.sinks.influxdb_lines import Layout, Renderer, reading_of, series_hash
from fieldbridge.sinks.influxdb_settings import InfluxDBSettings
from fieldbridge.store import Store
from tests.store.test_store import T0, accepted, payload, record

LAYOUTS = [
    Layout("{quantity}", "value", ("device", "kind", "channel", "team"), (), "ms"),
    # The seed's own naming: one line per message, a field per quantity (lines merge).
    Layout("{source}", "{quantity}", ("device", "unit"), (("site", "a b"),), "s"),
    Layout("m", "{device}", (), (), "ns"),  # one series for all: every reading merges
]

MESSAGES = [
    [Reading("temp", 20.5, T0), Reading("hum", 61.0, T0), Reading("VBat", 3.3, T0 + 0.0004)],
    [Reading("temp", 1.0, T0 + 1), Reading("temp", 2.0, T0 + 2), Reading("temp", 3.0, T0 + 3)],
    [Reading("temp", 1.0, T0 + 4), Reading("temp", 9.0, T0 + 4)],  # same point twice: last wins
    [Reading("temp", 1.0, T0 + 5, channel=2, unit="C"), Reading("temp", 4.0, T0 + 5, unit="F")],
    [Reading("level", 7.0, T0 + 6, extra={"tags": {"trap": "T1"}}), Reading("hum", 5.0, T0 + 6)],
    [Reading("state", None, T0 + 7, extra={"event": "T", "open": True}), Reading("t", 1.0, T0)],
    [Reading("odd name, =x", 1.5, T0 + 8), Reading("#hash", -2.0, T0 + 8)],
    [Reading("big", 1e300, T0 + 9), Reading("int", 3.0, T0 + 9)],
    [],
    [Reading("one", 0.1 + 0.2, T0 + 10)],
    [Reading("tiny", 5e-324, T0 + 11), Reading("o", 0.0, T0 + 11)],
    [Reading("zero", -0.0, T0 + 14)],  # SQLite keeps it as 0.0: not packed
    [Reading("a\x1fb", 1.0, T0 + 12), Reading("c", 2.0, T0 + 12)],  # a separator: not packed
    [Reading("inf", math.inf, T0 + 13), Reading("c", 2.0, T0 + 13)],  # not finite: not packed
]
PACKED = 5  # of MESSAGES: all plain numbers at one instant


async def stored(store: Store) -> tuple[list[JournalEntry], list[JournalEntry]]:
    batch = [
        payload(record(f"dev {n % 3}", readings=readings, kind="trap" if n % 2 else None))
        for n, readings in enumerate(MESSAGES)
    ]
    await accepted(store, batch)
    return await store.read_journal(0, 100), await store.read_journal(0, 100, rows=True)


async def test_rows_carry_the_readings_of_each_message(store: Store) -> None:
    objects, rows = await stored(store)
    assert [e.id for e in rows] == [e.id for e in objects]
    for with_objects, with_rows in zip(objects, rows, strict=True):
        assert with_rows.readings == ()
        assert all(row[0] == with_rows.id for row in with_rows.rows)
        assert tuple(reading_of(row) for row in with_rows.rows) == with_objects.readings
        assert (with_rows.device, with_rows.kind, with_rows.meta) == (
            with_objects.device,
            with_objects.kind,
            with_objects.meta,
        )


async def as_the_sink_reads(store: Store) -> list[JournalEntry]:
    """The messages as the InfluxDB sink reads them: packed, or with rows when not."""
    bare = await store.read_journal(0, 100, readings=False)
    assert sum(e.packed is not None for e in bare) == PACKED
    rows = await store.reading_rows([e.id for e in bare if e.packed is None])
    return [replace(e, rows=rows[e.id]) if e.id in rows else e for e in bare]


@pytest.mark.parametrize("path", ["rows", "packed"])
async def test_rows_and_packed_render_the_lines_readings_render(store: Store, path: str) -> None:
    objects, rows = await stored(store)
    if path == "packed":
        rows = await as_the_sink_reads(store)
    teams = {"dev 1": "north", "dev 2": None}
    for layout in LAYOUTS:
        renderer = Renderer(layout)
        for _ in range(2):  # the second time from the kept naming
            want = renderer.render(objects, teams)
            got = renderer.texts(rows, teams)
            assert got.texts == [line.text for line in want]
            assert [e.id for e in got.owners] == [line.entry_id for line in want]
            assert got.hashes == [series_hash(line.series) for line in want]
            # Objects through the same path (a dead letter's retry reads them): the same.
            assert renderer.texts(objects, teams).texts == got.texts


def test_a_reading_that_is_not_finite_has_no_line() -> None:
    row = (1, "temp", math.inf, T0, 0, None, None)
    entry = JournalEntry(
        1, T0, "http", "d", None, {}, b"", (), (row, (1, "hum", 2.0, T0, 0, None, None))
    )
    renderer = Renderer(LAYOUTS[0])
    assert renderer.texts([entry], {}).texts == ["hum,channel=0,device=d value=2.0 1700000000000"]


def test_values_kept_as_text_render_as_their_repr() -> None:
    """The renderer keeps the text of values it has seen; each line is still the value's own
    repr: 0.0 and -0.0 (equal as keys) apart, tiny and huge numbers, repeats across
    messages and batches, non-finite values without a line."""
    values = [
        0.0,
        -0.0,
        0.0,
        1e-320,
        5e-324,
        1e300,
        1.7976931348623157e308,
        -1e16,
        1e16,
        0.1,
        0.1 + 0.2,
        1 / 3,
        123456789.125,
        -2.5,
        math.inf,
        -math.inf,
        math.nan,
    ]
    entries = [
        JournalEntry(
            n,
            T0,
            "http",
            "dé v,1",
            None,
            {},
            b"",
            (),
            ((n, "t=1 x", value, T0 + n, 0, None, None), (n, "hum", -value, T0 + n, 1, "%", None)),
        )
        for n, value in enumerate(values * 2, start=1)
    ]
    for layout in LAYOUTS:
        renderer = Renderer(layout)
        for _ in range(2):  # the second time from the kept texts
            got = renderer.texts(entries, {})
            want = renderer.render(entries, {})
            assert got.texts == [line.text for line in want]
            assert got.hashes == [series_hash(line.series) for line in want]
    plain = Renderer(LAYOUTS[0]).texts(entries, {}).texts
    assert plain[:4] == [
        "t=1\\ x,channel=0,device=dé\\ v\\,1 value=0.0 1700000001000",
        "hum,channel=1,device=dé\\ v\\,1 value=-0.0 1700000001000",
        "t=1\\ x,channel=0,device=dé\\ v\\,1 value=-0.0 1700000002000",
        "hum,channel=1,device=dé\\ v\\,1 value=0.0 1700000002000",
    ]
    assert not any("inf" in text or "nan" in text for text in plain)


def plain_messages(
    count: int, devices: list[str], quantities: tuple[str, ...]
) -> list[JournalEntry]:
    """Messages 1..count read with rows, of devices in turn, a plain reading of each quantity
    valued and timed by the message's number."""
    return [
        JournalEntry(
            n,
            T0,
            "http",
            devices[n % len(devices)],
            None,
            {},
            b"",
            (),
            tuple((n, q, float(n), T0 + n, 0, None, None) for q in quantities),
        )
        for n in range(1, count + 1)
    ]


def test_requests_keep_a_series_in_one_lane_in_order_within_both_limits() -> None:
    renderer = Renderer(Layout("{quantity}", "value", ("device",), (), "s"))
    entries = plain_messages(3000, [f"d{n}" for n in range(7)], ("a", "b", "c"))
    rendered = renderer.texts(entries, {})
    lanes = plan_requests(rendered, 1000, 20_000)
    assert len(lanes) == 9  # 9,000 lines of at most 1,000 a request
    seen: dict[str, int] = {}
    sent = []
    for number, lane in enumerate(lanes):
        for request in lane:
            assert len(request.texts) <= 1000 and len(request.body) <= 20_000
            assert request.body == ("\n".join(request.texts) + "\n").encode()
            for text, owner in zip(request.texts, request.owners, strict=True):
                series, _, stamp = text.partition(" value=")
                assert seen.setdefault(series, number) == number  # one lane per series
                assert str(owner.id) == stamp.split()[0].split(".")[0]
                sent.append(text)
    assert sorted(sent) == sorted(rendered.texts)
    for series in seen:  # each series' points in the order rendered
        mine = [t for t in sent if t.startswith(series + " ")]
        assert mine == [t for t in rendered.texts if t.startswith(series + " ")]


@pytest.mark.parametrize("zipped", [False, True])
async def test_a_batch_prepared_ahead_is_sent_only_for_the_same_messages(
    store: Store, zipped: bool
) -> None:
    """`prepare` renders, cuts and gzips the batch read ahead; `send` uses it only when given
    exactly those messages (a route's skips or a halving give others: rendered afresh)."""
    _, rows = await stored(store)
    bodies: list[bytes] = []

    def answer(request: httpx.Request) -> httpx.Response:
        assert (request.headers.get("content-encoding") == "gzip") == zipped
        bodies.append(gzip.decompress(request.content) if zipped else request.content)
        return httpx.Response(204)

    settings = InfluxDBSettings(name="i", url="http://influx.invalid", database="d", gzip=zipped)
    async with InfluxDBDestination(settings, httpx.MockTransport(answer)) as destination:
        destination.bind(store)
        await destination.send(rows)
        fresh = list(bodies)
        for sent in (rows, rows[1:3], rows):
            bodies.clear()
            await destination.prepare(rows)
            await destination.send(sent)
            want = Renderer(settings.layout()).texts(sent, {}).texts
            assert b"".join(bodies).decode().splitlines() == want
        assert bodies == fresh  # the prepared batch: the same requests


def test_a_large_batch_goes_in_full_rounds_with_each_device_in_one_lane_in_order() -> None:
    """With 4 in flight, 25,000 lines of 100 devices go in 8 lanes (two full rounds of
    requests), the devices spread so the lanes carry about as many lines, each device's lines
    in one lane in the order rendered."""
    renderer = Renderer(Layout("{quantity}", "value", ("device",), (), "ms"))
    devices = [f"node-{n:03d}" for n in range(100)]
    entries = plain_messages(5000, devices, ("a", "b", "c", "d", "e"))
    rendered = renderer.texts(entries, {})
    assert rendered.spans is not None
    lanes = plan_requests(rendered, 5000, 10_000_000, in_flight=4)
    assert len(lanes) == 8
    sizes = [sum(len(r.texts) for r in lane) for lane in lanes]
    assert sum(sizes) == 25_000 and max(sizes) - min(sizes) <= 250  # one device's lines
    lane_of: dict[str, int] = {}
    for number, lane in enumerate(lanes):
        for request in lane:
            for owner in request.owners:
                assert lane_of.setdefault(owner.device, number) == number
            ids = [owner.id for owner in request.owners]
            assert ids == sorted(ids)
    # A live batch of 2,000 lines: two lanes of about 1,000, not one request of 2,000.
    small = renderer.texts(entries[:400], {})
    assert len(plan_requests(small, 5000, 10_000_000, in_flight=4)) == 2
