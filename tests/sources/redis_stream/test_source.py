"""The Redis stream source against a real redis-server: entries become messages after the
cursor, the cursor is saved after commit, and an outage or restart skips and doubles nothing."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import pytest

from fieldbridge.codecs.redis_stream import batch_entries, batch_readings
from fieldbridge.ingest import Ingest
from fieldbridge.sources.redis_stream import RedisStreamSettings, RedisStreamSource
from fieldbridge.sources.redis_stream.source import AHEAD_BATCHES
from fieldbridge.store import Store, open_store
from fieldbridge.store.migrate import upgrade
from fieldbridge.store.urls import parse_store_url
from tests.conftest import eventually
from tests.support.redis_server import RedisServer

STREAM = "measurement:values"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    upgrade(parse_store_url(url))
    async with open_store(url) as opened:
        yield opened


@asynccontextmanager
async def running(
    store: Store, server: RedisServer, **overrides: object
) -> AsyncIterator[RedisStreamSource]:
    options: dict[str, object] = {"name": "edge", "url": server.url, "device": "uuid-1"}
    options.update(overrides)
    settings = RedisStreamSettings.model_validate(options)
    async with Ingest(store) as ingest, RedisStreamSource(settings, ingest, store) as source:
        yield source


async def journal(store: Store) -> list[tuple[str, str, bytes]]:
    rows = await store.db.fetchall("SELECT device, idem_key, payload FROM journal ORDER BY id")
    return [(r[0], r[1], bytes(r[2])) for r in rows]


async def stored(store: Store, n: int) -> bool:
    rows = await store.db.fetchall("SELECT count(*) FROM journal")
    return int(rows[0][0]) >= n


async def test_entries_become_messages_of_the_device(
    store: Store, redis_server: RedisServer
) -> None:
    r = redis_server.client()
    first = r.xadd(STREAM, {"temperature_celsius": "20.3", "humidity": "41", "state": "ok"})
    second = r.xadd(STREAM, {"temperature_celsius": "-1.5e1", "note": "nan"})
    async with running(store, redis_server, batch_size=1) as source:
        await eventually(lambda: source.stats.cursor == second, "the cursor after both")
    rows = await journal(store)
    assert [(d, k) for d, k, _ in rows] == [("uuid-1", first), ("uuid-1", second)]
    # The raw strings, in stream order, are kept as the producer wrote them.
    assert orjson.loads(rows[0][2]) == {
        "id": first,
        "fields": {"temperature_celsius": "20.3", "humidity": "41", "state": "ok"},
    }
    readings = await store.db.fetchall(
        "SELECT quantity, value, measured_at FROM readings ORDER BY message_id, seq"
    )
    at = int(first.split("-")[0]) / 1000
    at2 = int(second.split("-")[0]) / 1000
    assert [(q, v, t) for q, v, t in readings] == [
        ("temperature_celsius", 20.3, at),
        ("humidity", 41.0, at),
        ("temperature_celsius", -15.0, at2),
    ]
    assert await store.source_cursor("edge") == second


async def test_a_restart_goes_on_after_the_saved_cursor(
    store: Store, redis_server: RedisServer
) -> None:
    r = redis_server.client()
    ids = [r.xadd(STREAM, {"n": str(n)}) for n in range(30)]
    async with running(store, redis_server, batch_size=7) as source:
        await eventually(lambda: source.stats.cursor == ids[-1], "all 30 read")
    ids += [r.xadd(STREAM, {"n": str(n)}) for n in range(30, 45)]
    async with running(store, redis_server, batch_size=7) as source:
        await eventually(lambda: source.stats.cursor == ids[-1], "the 15 new ones read")
        assert source.stats.read == 15  # nothing read again
    assert [k for _, k, _ in await journal(store)] == ids


async def test_no_cursor_starts_after_the_handlers_last_id(
    store: Store, redis_server: RedisServer
) -> None:
    r = redis_server.client()
    ids = [r.xadd(STREAM, {"n": str(n)}) for n in range(10)]
    r.set("mqtt_sender:last_id", "(" + ids[5])
    async with running(store, redis_server, start_after_key="mqtt_sender:last_id") as source:
        await eventually(lambda: source.stats.cursor == ids[-1], "the rest read")
    assert [k for _, k, _ in await journal(store)] == ids[6:]


async def test_redis_killed_and_restarted_while_a_producer_adds(
    store: Store, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Redis goes away three times while entries arrive: the source backs off, reconnects,
    and the journal ends up with every entry acknowledged by Redis, once, in order."""
    added: list[str] = []
    stop = threading.Event()

    def produce() -> None:
        import redis

        n = 0
        client = redis.Redis(host="127.0.0.1", port=redis_server.port, socket_timeout=1)
        while not stop.is_set():
            try:
                added.append(client.xadd(STREAM, {"n": str(n)}).decode())
                n += 1
            except redis.RedisError:
                stop.wait(0.05)  # down: the producer retries the same value
            stop.wait(0.002)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        async with running(store, redis_server, batch_size=50, max_backoff=0.5) as source:
            for round_ in range(3):
                want = 300 * (round_ + 1)
                await eventually(lambda want=want: len(added) > want, "entries added")
                redis_server.kill()
                await eventually(lambda: not source.stats.connected, "the source saw it")
                await asyncio.sleep(0.3)  # the source retries against nothing meanwhile
                redis_server.start()
            stop.set()
            await asyncio.to_thread(producer.join)
            # An XADD whose reply was lost in a kill may be in the stream all the same.
            in_stream = [i for i, _ in redis_server.client().xrange(STREAM)]
            assert set(added) <= set(in_stream)
            await eventually(lambda: source.stats.cursor == in_stream[-1], "caught up", timeout=30)
            assert source.stats.reconnects >= 3
    finally:
        stop.set()
        producer.join()
    keys = [k for _, k, _ in await journal(store)]
    assert keys == in_stream  # none skipped, none twice, in order


async def test_a_batch_is_one_payload_committed_in_stream_order(
    store: Store, redis_server: RedisServer
) -> None:
    """XREAD batches are handed to ingest as one payload (one transaction: in or out as a
    whole, so a store failure cannot reorder the journal): the first alone, then what was read
    while the last one committed (at most AHEAD_BATCHES more); entries stay a message each."""
    r = redis_server.client()
    pipe = r.pipeline(transaction=False)
    for n in range(1000):
        pipe.xadd(STREAM, {"n": str(n)})
    ids: list[str] = pipe.execute()
    payloads: list[int] = []
    settings = RedisStreamSettings.model_validate(
        {"name": "edge", "url": redis_server.url, "device": "uuid-1", "batch_size": 64}
    )
    async with Ingest(store) as ingest:
        ingest.add_tap(lambda incoming, *_: payloads.append(incoming.payload.count(b"\n") + 1))
        async with RedisStreamSource(settings, ingest, store) as source:
            await eventually(lambda: source.stats.cursor == ids[-1], "all 1000 read")
    assert payloads[0] == 64 and sum(payloads) == 1000 and len(payloads) <= 16 + 1
    assert max(payloads) <= (AHEAD_BATCHES + 1) * 64
    rows = await journal(store)
    assert [k for _, k, _ in rows] == ids
    assert [orjson.loads(p)["fields"]["n"] for _, _, p in rows] == [str(n) for n in range(1000)]


# --- journal = "batch" --------------------------------------------------------------------


async def batched(store: Store) -> list[tuple[str, dict[str, str]]]:
    """Every entry the journal holds, in order, from its batch messages."""
    out: list[tuple[str, dict[str, str]]] = []
    for _, key, payload in await journal(store):
        entries = batch_entries(payload)
        assert key == entries[-1][0]  # a batch's key is its last entry id
        out.extend(entries)
    return out


async def test_a_batch_journal_keeps_a_message_per_batch_and_no_reading_rows(
    store: Store, redis_server: RedisServer
) -> None:
    r = redis_server.client()
    written = [(r.xadd(STREAM, {"t": f"{n}.5", "label": "x"}), n) for n in range(25)]
    async with running(store, redis_server, batch_size=10, journal="batch") as source:
        await eventually(lambda: source.stats.cursor == written[-1][0], "all 25 read")
    rows = await journal(store)
    assert len(rows) == 3 and all(device == "uuid-1" for device, _, _ in rows)
    assert await batched(store) == [(i, {"t": f"{n}.5", "label": "x"}) for i, n in written]
    assert (await store.db.fetchall("SELECT count(*) FROM readings"))[0][0] == 0
    # what a sink that sends readings is given
    [entry] = await store.read_journal(0, 1, with_payload=True)
    assert entry.meta == {"stream": STREAM, "batch": True}
    assert [(x.quantity, x.value) for x in batch_readings(entry.payload)][:2] == [
        ("t", 0.5),
        ("t", 1.5),
    ]


async def test_a_batch_journal_restarts_after_the_newest_stored_batch(
    store: Store, redis_server: RedisServer
) -> None:
    """The cursor is saved at most once a second: after a crash the newest stored batch may be
    further on. Starting after it, no entry is stored twice and none is skipped."""
    r = redis_server.client()
    ids = [r.xadd(STREAM, {"n": str(n)}) for n in range(40)]
    async with running(store, redis_server, batch_size=8, journal="batch") as source:
        await eventually(lambda: source.stats.cursor == ids[-1], "all 40 read")
    await store.save_source_cursor("edge", ids[3])  # as if the process died before its save
    ids += [r.xadd(STREAM, {"n": str(n)}) for n in range(40, 50)]
    async with running(store, redis_server, batch_size=8, journal="batch") as source:
        await eventually(lambda: source.stats.cursor == ids[-1], "the 10 new ones read")
        assert source.stats.read == 10
    assert [i for i, _ in await batched(store)] == ids
