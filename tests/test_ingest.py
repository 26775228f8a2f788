"""Group-commit ingest on a real store: acknowledged after commit, batched, bounded, never lossy."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from fieldbridge.codecs import smartcitizen
from fieldbridge.codecs.http_json import decode
from fieldbridge.errors import DecodeError, StoreError
from fieldbridge.ingest import BATCH_BYTES, BURST_BATCHES, Busy, Ingest, ShuttingDown
from fieldbridge.model import Accepted, Decoded, Outcome, Refusal, Rejected
from fieldbridge.observe import Metrics
from fieldbridge.store import Store, open_store, parse_store_url
from fieldbridge.store.migrate import upgrade
from tests.conftest import eventually, wait_until
from tests.support.locks import sqlite_write_locked
from tests.support.paths import FIXTURES
from tests.support.processes import FieldbridgeProcess
from tests.support.rss import peak_mb, rss_mb

WAIT = 20.0  # seconds before a stuck await fails the test instead of hanging it


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'ingest.db'}"
    upgrade(parse_store_url(url))
    return url


def body(device: str = "dev-1", key: str | int | None = None, value: float = 21.5) -> bytes:
    message: dict[str, Any] = {"device": device, "readings": {"temperature": value}}
    if key is not None:
        message["id"] = key
    return orjson.dumps(message)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def sqlite_locked(url: str) -> contextlib.AbstractContextManager[None]:
    """Another connection holds the SQLite write lock until the block ends."""
    path = parse_store_url(url).sqlite_path
    assert path is not None
    return sqlite_write_locked(path)


@contextlib.asynccontextmanager
async def running(store: Store, **options: Any) -> AsyncIterator[Ingest]:
    async with Ingest(store, **options) as ingest:
        yield ingest


# --- acknowledged after commit ----------------------------------------------------------------


async def test_submit_returns_only_after_commit(store: Store, store_url: str) -> None:
    async with running(store) as ingest, open_store(store_url) as observer:
        for n in range(5):
            outcome = await ingest.submit("http", body(f"dev-{n}"), decode, {"n": n})
            assert isinstance(outcome, Accepted)
            # Another connection already sees the message and its reading: it is committed.
            (entry,) = await observer.journal_by_ids(outcome.ids, with_payload=True)
            assert entry.device == f"dev-{n}"
            assert entry.meta == {"n": n}
            assert entry.payload == body(f"dev-{n}")
            assert [r.value for r in entry.readings] == [21.5]


async def test_group_commit_batches_concurrent_payloads(sqlite_url: str) -> None:
    metrics = Metrics()
    async with (
        open_store(sqlite_url) as store,
        running(store, batch_size=250, flush_ms=5, metrics=metrics) as ingest,
    ):
        outcomes = await asyncio.wait_for(
            asyncio.gather(
                *(ingest.submit("http", body(f"d{n % 50}"), decode) for n in range(2000))
            ),
            WAIT,
        )
        assert all(isinstance(o, Accepted) for o in outcomes)
        ids = [i for o in outcomes if isinstance(o, Accepted) for i in o.ids]
        assert len(set(ids)) == 2000
        assert await store.head_id() == 2000

    commits = sample(metrics, "fieldbridge_commit_batch_size_count")
    assert sample(metrics, "fieldbridge_commit_batch_size_sum") == 2000
    assert 2 <= commits <= 40, f"{commits} transactions for 2000 payloads"  # 50+ per commit
    # All 2000 waited at once (a backlog): batches of half what waits (BURST_BATCHES x 250 at
    # most), so 1000 at most.
    assert BURST_BATCHES * 250 >= 1000
    assert sample(metrics, "fieldbridge_commit_batch_size_bucket", le="1000.0") == commits
    assert (
        sample(metrics, "fieldbridge_ingest_payloads_total", source="http", outcome="accepted")
        == 2000
    )


async def test_meta_mappings_shared_by_payloads_are_stored_with_each(sqlite_url: str) -> None:
    """A source may hand in one meta mapping for many payloads (the MQTT source, one per
    topic): each journal row holds its own payload's meta, whatever the order in a batch."""
    metas: list[Mapping[str, Any]] = [{"topic": "a/1", "qos": 1}, {"topic": "b/2"}, {}]
    async with open_store(sqlite_url) as store, running(store, flush_ms=50) as ingest:
        futures = [ingest.offer("mqtt", body(f"d{n}"), decode, metas[n % 3]) for n in range(9)]
        outcomes = await asyncio.wait_for(asyncio.gather(*futures), WAIT)
        ids = [o.ids[0] for o in outcomes if isinstance(o, Accepted)]
        entries = await store.journal_by_ids(ids)
    assert [e.meta for e in entries] == [metas[n % 3] for n in range(9)]


async def test_answer_listeners_run_after_every_resolved_batch(sqlite_url: str) -> None:
    """on_answered: called once a batch's futures are resolved, committed or failed."""
    seen: list[list[bool]] = []
    futures: list[asyncio.Future[Outcome]] = []

    def look() -> None:  # every future handed in so far is resolved by now, or still waits
        seen.append([f.done() for f in futures])

    async with (
        open_store(sqlite_url, busy_timeout_ms=200) as store,
        running(store) as ingest,
    ):
        remove = ingest.on_answered(look)
        futures.append(ingest.offer("http", body("a"), decode))
        await asyncio.wait_for(futures[0], WAIT)
        assert seen == [[True]]
        with sqlite_locked(sqlite_url):
            futures.append(ingest.offer("http", body("b"), decode))
            with pytest.raises(StoreError):
                await asyncio.wait_for(futures[1], WAIT)
        assert seen[-1] == [True, True]
        remove()
        answered = len(seen)
        await ingest.submit("http", body("c"), decode)
        assert len(seen) == answered


async def test_a_backlog_takes_larger_batches_in_order(sqlite_url: str) -> None:
    """Without a backlog a batch is batch_size at most; with one, half of what waits (up to
    BURST_BATCHES x batch_size), and the order of the journal is the order handed in."""
    metrics = Metrics()
    async with (
        open_store(sqlite_url) as store,
        running(store, batch_size=100, flush_ms=5, metrics=metrics) as ingest,
    ):
        await ingest.submit("http", body("warm-up"), decode)  # opens the store's connections
        futures = [ingest.offer("http", body(f"d{n % 7}", key=n), decode) for n in range(150)]
        await asyncio.wait_for(asyncio.gather(*futures), WAIT)
        # 150 waiting: not a backlog (half is 75), so batches of 100 and 50.
        assert sample(metrics, "fieldbridge_commit_batch_size_bucket", le="100.0") == 3
        futures = [ingest.offer("http", body(f"d{n % 7}", key=n), decode) for n in range(150, 2150)]
        outcomes = await asyncio.wait_for(asyncio.gather(*futures), WAIT)
    commits = sample(metrics, "fieldbridge_commit_batch_size_count")
    assert BURST_BATCHES * 100 == 1000
    largest = sample(metrics, "fieldbridge_commit_batch_size_bucket", le="1000.0")
    assert largest == commits, "no batch over BURST_BATCHES x batch_size"
    assert sample(metrics, "fieldbridge_commit_batch_size_bucket", le="250.0") < commits
    assert commits < 3 + 20, f"{commits} transactions: the backlog was taken 100 at a time"
    ids = [o.ids[0] for o in outcomes if isinstance(o, Accepted)]
    assert ids == sorted(ids) and len(ids) == 2000


async def test_flushes_after_flush_ms_with_a_single_payload(sqlite_url: str) -> None:
    async with open_store(sqlite_url) as store, running(store, flush_ms=5) as ingest:
        await ingest.submit("http", body("warm-up"), decode)  # opens the store's connections
        started = time.monotonic()
        outcome = await asyncio.wait_for(ingest.submit("http", body(), decode), WAIT)
        elapsed = time.monotonic() - started
        assert isinstance(outcome, Accepted)
        assert elapsed < 1.0, f"one payload waited {elapsed:.3f} s for a 5 ms flush"


async def test_a_full_batch_flushes_before_flush_ms(sqlite_url: str) -> None:
    metrics = Metrics()
    async with (
        open_store(sqlite_url) as store,
        running(store, batch_size=3, flush_ms=600_000, metrics=metrics) as ingest,
    ):
        first = [asyncio.create_task(ingest.submit("http", body(f"d{n}"), decode)) for n in (1, 2)]
        await asyncio.sleep(0.3)  # a window in which nothing may happen
        assert not any(t.done() for t in first)  # two of three: waiting for the batch to fill
        third = await asyncio.wait_for(ingest.submit("http", body("d3"), decode), WAIT)
        done = await asyncio.wait_for(asyncio.gather(*first), WAIT)
        assert all(isinstance(o, Accepted) for o in [*done, third])
    assert sample(metrics, "fieldbridge_commit_batch_size_count") == 1
    assert sample(metrics, "fieldbridge_commit_batch_size_sum") == 3


# --- bad payloads are answered and kept -------------------------------------------------------


def crashing_codec(payload: bytes, meta: Mapping[str, Any], received_at: float) -> list[Decoded]:
    raise ValueError(f"unexpected byte \x00 in {payload[:4]!r}")


def empty_codec(payload: bytes, meta: Mapping[str, Any], received_at: float) -> list[Decoded]:
    return []


def refusing_codec(payload: bytes, meta: Mapping[str, Any], received_at: float) -> list[Decoded]:
    raise DecodeError("frame too short", malformed=True)


async def test_codec_failures_are_rejected_and_quarantined(store: Store) -> None:
    metrics = Metrics()
    async with running(store, metrics=metrics) as ingest:
        submissions = [
            ingest.submit("http", b'{"device": "d"}', decode, {"remote": "10.0.0.1"}),
            ingest.submit("http", b"{not json", decode),
            ingest.submit("coap", b"\x01\x02", refusing_codec),
            ingest.submit("coap", b"\xffboom", crashing_codec),
            ingest.submit("mqtt", b"[]-ish", empty_codec),
            ingest.submit("http", body("a\x00b"), decode),  # NUL: refused, not a failed batch
            ingest.submit("http", body("fine"), decode),
        ]
        outcomes: list[Outcome] = await asyncio.wait_for(asyncio.gather(*submissions), WAIT)

    *refusals, good = outcomes
    assert isinstance(good, Accepted)
    rejected = [o for o in refusals if isinstance(o, Rejected)]
    assert len(rejected) == 6
    assert [(o.reason.split(":")[0], o.malformed) for o in rejected] == [
        ("readings", False),
        ("body is not valid JSON", True),
        ("frame too short", True),
        ("codec error", False),
        ("payload holds no message", False),
        ("device", False),
    ]
    assert rejected[0].reason == "readings: must be a non-empty object of quantity: value"
    assert rejected[3].reason.startswith("codec error: ValueError: unexpected byte")
    assert rejected[5].reason == "device: must not contain NUL characters"

    kept = {q.id: q for q in await store.list_quarantine()}
    assert len(kept) == 6
    sent = [b'{"device": "d"}', b"{not json", b"\x01\x02", b"\xffboom", b"[]-ish", body("a\x00b")]
    for outcome, raw in zip(rejected, sent, strict=True):
        entry = kept[outcome.quarantine_id]
        assert entry.payload == raw  # nothing dropped: the exact bytes are kept
        assert entry.reason == outcome.reason
    assert kept[rejected[0].quarantine_id].meta == {"remote": "10.0.0.1"}
    assert [e.device for e in await store.read_journal(0, 10)] == ["fine"]
    assert sample(metrics, "fieldbridge_quarantined_total", source="coap") == 2
    assert (
        sample(metrics, "fieldbridge_ingest_payloads_total", source="http", outcome="rejected") == 3
    )


SC_MESSAGES = {
    m["name"]: m
    for m in orjson.loads((FIXTURES / "smartcitizen" / "messages.json").read_bytes())["messages"]
}


async def test_a_payload_taken_in_part_stores_its_messages_and_quarantines_the_rest(
    store: Store,
) -> None:
    """Smart Citizen readings with one future item: both results in one transaction."""
    catch_up = SC_MESSAGES["readings_catch_up_one_future"]
    payload, meta = catch_up["payload"].encode(), {"topic": catch_up["topic"]}
    received = datetime(2026, 11, 23, 8, 0, tzinfo=UTC).timestamp()
    metrics = Metrics()
    async with running(store, metrics=metrics) as ingest:
        first = await ingest.submit("kits", payload, smartcitizen.decode, meta, received)
        again = await ingest.submit("kits", payload, smartcitizen.decode, meta, received)
        registered_only = smartcitizen.build({"registered_only": True})
        stranger = {"topic": "device/sck/zz9x1q/readings"}
        unknown = await ingest.submit("kits", payload, registered_only, stranger, received)

    assert isinstance(first, Accepted)
    assert first.duplicates == 0
    [item] = first.quarantined
    assert item.reason.startswith("data[1].recorded_at: '2033-05-18T03:33:20Z' is more than")
    [entry] = await store.journal_by_ids(first.ids, with_payload=True)
    assert entry.payload == payload  # the message keeps the payload as received
    assert [(r.quantity, r.value) for r in entry.readings] == [
        ("battery", 81.0), ("temperature", 12.4), ("battery", 80.0), ("temperature", 12.1)
    ]  # fmt: skip
    kept = {q.id: q for q in await store.list_quarantine()}
    assert orjson.loads(kept[item.quarantine_id].payload)["data"][0]["recorded_at"] == (
        "2033-05-18T03:33:20Z"
    )
    assert kept[item.quarantine_id].reason == item.reason
    assert kept[item.quarantine_id].meta == meta

    # A redelivery is a duplicate of the stored part; its bad item is quarantined again.
    assert isinstance(again, Accepted)
    assert (again.ids, again.duplicates, len(again.quarantined)) == (first.ids, 1, 1)
    # A payload refused whole (a kit not registered) has no refused parts of its own.
    assert isinstance(unknown, Rejected)
    assert unknown.cause == "unregistered_device"
    assert len(await store.list_quarantine()) == 3
    assert [e.id for e in await store.read_journal(0, 10)] == list(first.ids)
    assert sample(metrics, "fieldbridge_quarantined_total", source="kits") == 3
    assert (
        sample(metrics, "fieldbridge_rejected_payloads_total", source="kits", cause="invalid") == 2
    )


def parts_codec(payload: bytes, meta: Mapping[str, Any], received_at: float) -> list[Any]:
    """Refuses every part: a codec that found nothing valid but did not raise."""
    return [Refusal("part one is bad", b"1", "odd"), Refusal("part two is bad")]


async def test_only_refused_parts_reject_the_payload_whole(store: Store) -> None:
    async with running(store) as ingest:
        outcome = await ingest.submit("x", b"12", parts_codec)
    assert isinstance(outcome, Rejected)
    assert (outcome.reason, outcome.cause) == ("part one is bad; part two is bad", "odd")
    [kept] = await store.list_quarantine()
    assert kept.payload == b"12"


# --- store failure: every payload of the batch is told to retry -------------------------------


async def test_store_failure_fails_the_batch_then_the_same_payloads_succeed(
    sqlite_url: str,
) -> None:
    metrics = Metrics()
    bodies = [body(f"d{n}", key=f"msg-{n}") for n in range(10)]
    async with (
        open_store(sqlite_url, busy_timeout_ms=200) as store,
        running(store, metrics=metrics) as ingest,
    ):
        await ingest.submit("http", body("warm-up"), decode)
        with sqlite_locked(sqlite_url):
            failed = await asyncio.wait_for(
                asyncio.gather(
                    *(ingest.submit("http", b, decode) for b in bodies), return_exceptions=True
                ),
                WAIT,
            )
        assert all(isinstance(f, StoreError) for f in failed), failed
        assert ingest.last_commit_ok is False
        assert await store.head_id() == 1
        assert await store.count_quarantine() == 0

        # The devices retry: stored now, and only once.
        retried = await asyncio.wait_for(
            asyncio.gather(*(ingest.submit("http", b, decode) for b in bodies)), WAIT
        )
        assert [o.duplicates for o in retried if isinstance(o, Accepted)] == [0] * 10
        assert ingest.last_commit_ok is True
        again = await asyncio.wait_for(
            asyncio.gather(*(ingest.submit("http", b, decode) for b in bodies)), WAIT
        )
        assert [o.duplicates for o in again if isinstance(o, Accepted)] == [1] * 10
        assert await store.head_id() == 11
    assert (
        sample(metrics, "fieldbridge_ingest_payloads_total", source="http", outcome="store_error")
        == 10
    )


# --- back-pressure ----------------------------------------------------------------------------


async def test_a_full_queue_makes_sources_wait(sqlite_url: str) -> None:
    decoded: list[bytes] = []

    def counting(payload: bytes, meta: Mapping[str, Any], received_at: float) -> list[Decoded]:
        decoded.append(payload)
        return decode(payload, meta, received_at)

    async with (
        open_store(sqlite_url, busy_timeout_ms=30_000) as store,
        running(store, batch_size=100, flush_ms=1, queue_bound=4) as ingest,
    ):
        await ingest.submit("http", body("warm-up"), counting)
        decoded.clear()
        with sqlite_locked(sqlite_url):
            first = [
                asyncio.create_task(ingest.submit("http", body(f"d{n}"), counting))
                for n in range(4)
            ]
            # The four were taken into a batch, whose commit now waits for the write lock.
            await eventually(lambda: len(decoded) == 4, "the first batch is decoded")
            assert not ingest.has_room
            fifth = asyncio.create_task(ingest.submit("http", body("d4"), counting))
            await asyncio.sleep(0.3)  # a window in which nothing may happen
            # Had the fifth entered the queue, ingest would have decoded it within 1 ms.
            assert len(decoded) == 4
            assert not fifth.done() and not any(t.done() for t in first)
        outcomes = await asyncio.wait_for(asyncio.gather(*first, fifth), WAIT)
        assert all(isinstance(o, Accepted) for o in outcomes)
        assert len(decoded) == 5
        assert ingest.has_room
        assert await store.head_id() == 6


def readings_body(device: str, size: int) -> bytes:
    """One message whose readings fill about `size` bytes."""
    return orjson.dumps(
        {"device": device, "readings": {f"q{i:07d}": i % 1000 / 10 for i in range(size // 16)}}
    )


async def test_the_byte_budget_makes_a_reservation_wait_then_refuses_it(sqlite_url: str) -> None:
    metrics = Metrics()
    budget = 100_000
    async with (
        open_store(sqlite_url, busy_timeout_ms=30_000) as store,
        running(store, max_in_flight_bytes=budget, in_flight_wait_s=0.3, metrics=metrics) as ingest,
    ):
        big = readings_body("big", 60_000)
        with sqlite_locked(sqlite_url):
            held = await ingest.reserve(len(big), "http")
            first = asyncio.create_task(ingest.submit("http", big, decode, reservation=held))
            await eventually(lambda: ingest.in_flight_bytes == len(big), "the body handed in")
            assert ingest.has_room  # 60 KB of 100 KB: a small MQTT payload still fits
            started = time.monotonic()
            with pytest.raises(Busy, match=r"ingest\.max_in_flight_bytes.*in_flight_wait_s"):
                await ingest.reserve(len(big), "http")
            assert time.monotonic() - started >= 0.3  # it waited for room first
            assert sample(metrics, "fieldbridge_ingest_budget_refused_total", source="http") == 1
            waiting = asyncio.create_task(ingest.reserve(len(big), "http"))
        # The lock is gone: the first commits, its bytes come free, the waiting one gets them.
        assert isinstance(await asyncio.wait_for(first, WAIT), Accepted)
        second = await asyncio.wait_for(waiting, WAIT)
        assert ingest.in_flight_bytes == len(big)
        ingest.release(second)
        ingest.release(second)  # twice is harmless
        assert ingest.in_flight_bytes == 0
        assert sample(metrics, "fieldbridge_ingest_in_flight_bytes") == 0


async def test_a_payload_larger_than_the_budget_passes_alone(sqlite_url: str) -> None:
    async with open_store(sqlite_url) as store, running(store, max_in_flight_bytes=1000) as ingest:
        big = readings_body("big", 50_000)
        held = await asyncio.wait_for(ingest.reserve(len(big), "http"), WAIT)
        assert not ingest.has_room  # a callback-driven source now waits for room
        assert isinstance(await ingest.submit("http", big, decode, reservation=held), Accepted)
        assert ingest.has_room and ingest.in_flight_bytes == 0


async def test_large_payloads_are_committed_a_few_at_a_time(sqlite_url: str) -> None:
    metrics = Metrics()
    bodies = [readings_body(f"big-{n}", BATCH_BYTES // 2 + 40_000) for n in range(6)]
    assert all(BATCH_BYTES // 2 < len(b) < BATCH_BYTES for b in bodies)  # two fill a batch
    async with open_store(sqlite_url) as store, running(store, metrics=metrics) as ingest:
        outcomes = await asyncio.gather(*(ingest.submit("http", b, decode) for b in bodies))
    assert all(isinstance(o, Accepted) for o in outcomes)
    assert sample(metrics, "fieldbridge_commit_batch_size_sum") == 6
    assert sample(metrics, "fieldbridge_commit_batch_size_count") >= 3


async def test_a_small_payload_does_not_wait_behind_a_run_of_large_ones(sqlite_url: str) -> None:
    large = [readings_body(f"big-{n}", 200_000) for n in range(6)]
    async with open_store(sqlite_url) as store, running(store) as ingest:
        outcomes = await asyncio.gather(
            *(ingest.submit("http", b, decode) for b in large),
            ingest.submit("http", body("small"), decode),
        )
    ids = [o.ids[0] for o in outcomes if isinstance(o, Accepted)]
    assert len(ids) == 7
    assert ids[:6] == sorted(ids[:6])  # large ones keep their order among themselves
    assert ids[6] < ids[5]  # the small one, handed in last, did not wait for all of them


# --- shutdown ---------------------------------------------------------------------------------


async def test_close_answers_everything_handed_in_then_refuses(sqlite_url: str) -> None:
    async with open_store(sqlite_url) as store:
        ingest = Ingest(store, batch_size=7, flush_ms=50)
        async with ingest:
            offered = [ingest.offer("redis", body(f"o{n}"), decode) for n in range(30)]
            submitted = [
                asyncio.create_task(ingest.submit("http", body(f"s{n}"), decode)) for n in range(20)
            ]
            await asyncio.sleep(0)  # the submit tasks run up to their hand-in
            await asyncio.wait_for(ingest.close(), WAIT)
            assert all(f.done() and isinstance(f.result(), Accepted) for f in offered)
            answers = await asyncio.wait_for(asyncio.gather(*submitted), WAIT)
            assert all(isinstance(a, Accepted) for a in answers)
            assert await store.head_id() == 50

            with pytest.raises(ShuttingDown):
                await ingest.submit("http", body("late"), decode)
            with pytest.raises(StoreError, match="shutting down"):
                ingest.offer("redis", body("late"), decode)
        assert await store.head_id() == 50


# --- idempotency through the real codec -------------------------------------------------------


async def test_same_id_twice_is_one_message_and_one_reading(store: Store) -> None:
    async with running(store) as ingest:
        first = await ingest.submit("http", body("dev-9", key="abc"), decode)
        second = await ingest.submit("http", body("dev-9", key="abc", value=99.0), decode)
        assert isinstance(first, Accepted) and isinstance(second, Accepted)
        assert first.duplicates == 0
        assert second == Accepted(first.ids, duplicates=1)

        # Twice in one batch, and once more from another source: that one is a new message.
        together = await asyncio.wait_for(
            asyncio.gather(
                ingest.submit("http", body("dev-9", key=7), decode),
                ingest.submit("http", body("dev-9", key="7"), decode),
                ingest.submit("mqtt", body("dev-9", key=7), decode),
            ),
            WAIT,
        )
    a, b, other = together
    assert isinstance(a, Accepted) and isinstance(b, Accepted) and isinstance(other, Accepted)
    assert b == Accepted(a.ids, duplicates=1)  # integer 7 and "7" are the same key
    assert other.duplicates == 0 and other.ids != a.ids

    readings = await store.list_readings("dev-9")
    assert [r.reading.value for r in readings] == [21.5, 21.5, 21.5]
    device = await store.get_device("dev-9")
    assert device is not None and device.message_count == 3


# --- the byte budget against a real service ---------------------------------------------------

HTTP_MAX_BODY = 1_048_576  # the HTTP source's default max_body_bytes


async def post_all(url: str, bodies: list[bytes]) -> list[httpx.Response]:
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(
        timeout=120.0, limits=httpx.Limits(max_connections=len(bodies))
    ) as client:
        return await asyncio.gather(*(client.post(url, content=b, headers=headers) for b in bodies))


async def test_concurrent_large_bodies_keep_memory_bounded_and_small_posts_prompt(
    tmp_path: Path,
) -> None:
    # The attack of issue 10: 16 concurrent 1 MB bodies peaked at 1.36 GB and stayed high,
    # and a one-reading POST meanwhile took up to 4.2 s.
    bodies = [readings_body(f"big-{n}", 1_000_000) for n in range(16)]
    assert all(len(b) <= HTTP_MAX_BODY for b in bodies)
    latencies: list[float] = []
    with FieldbridgeProcess(tmp_path / "big") as process:
        process.start()
        assert process.pid is not None
        async with httpx.AsyncClient(timeout=30.0) as small:
            warm = {"device": "warm", "readings": {"t": 1}}
            assert (await small.post(process.ingest_url, json=warm)).is_success
            idle = rss_mb(process.pid)
            done = asyncio.Event()

            async def one_reading_posts() -> None:
                n = 0
                while not done.is_set():
                    n += 1
                    started = time.monotonic()
                    one = {"device": "small", "readings": {"t": n}}
                    answer = await small.post(process.ingest_url, json=one)
                    assert answer.status_code == 200, answer.text
                    latencies.append(time.monotonic() - started)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(done.wait(), 0.2)  # load pacing

            timer = asyncio.create_task(one_reading_posts())
            answers = []
            answers += await post_all(process.ingest_url, bodies)
            done.set()
            await asyncio.wait_for(timer, WAIT)
        peak = peak_mb(process.pid)

        def settled() -> float | None:
            after = rss_mb(process.pid)  # type: ignore[arg-type]
            return after if after - idle < 120 else None

        wait_until(settled, "memory back near its idle size", timeout=15.0)
    assert [a.status_code for a in answers] == [200] * 16
    print(f"idle {idle:.0f} MB, peak {peak:.0f} MB, slowest small POST {max(latencies):.2f} s")
    assert peak < 400, f"peak RSS {peak:.0f} MB (idle {idle:.0f} MB)"
    # A one-reading POST waits for at most the large commit in progress (its own lane comes
    # next), not for all sixteen; the margin is for a loaded machine.
    assert latencies and max(latencies) < 10.0, f"one-reading POSTs took up to {max(latencies)} s"


async def test_bodies_beyond_the_byte_budget_get_503_with_retry_after(tmp_path: Path) -> None:
    bodies = [readings_body(f"big-{n}", 600_000) for n in range(8)]
    ingest = {"max_in_flight_bytes": 1_048_576, "in_flight_wait_s": 0.0}
    with FieldbridgeProcess(tmp_path / "budget", ingest=ingest) as process:
        process.start()
        answers = await post_all(process.ingest_url, bodies)
        async with httpx.AsyncClient(timeout=10.0) as client:
            metrics = (await client.get(f"{process.base_url}/metrics")).text
    refused = [a for a in answers if a.status_code == 503]
    assert refused and any(a.status_code == 200 for a in answers)
    assert all(a.status_code in (200, 503) for a in answers)
    assert refused[0].headers["retry-after"] == "2"
    assert "(ingest.max_in_flight_bytes)" in refused[0].json()["error"]
    assert f'fieldbridge_ingest_budget_refused_total{{source="http"}} {len(refused)}.0' in metrics
