"""Group-commit ingest on a real store: acknowledged after commit, batched, bounded, never lossy."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest

from fieldbridge.codecs.http_json import decode
from fieldbridge.errors import DecodeError, StoreError
from fieldbridge.ingest import Ingest, ShuttingDown
from fieldbridge.model import Accepted, Decoded, Outcome, Rejected
from fieldbridge.observe import Metrics
from fieldbridge.store import Store, open_store, parse_store_url
from fieldbridge.store.migrate import upgrade
from tests.conftest import eventually
from tests.support.locks import sqlite_write_locked

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
    assert 8 <= commits <= 40, f"{commits} transactions for 2000 payloads"  # 50+ per commit
    # No transaction took more than batch_size payloads.
    assert sample(metrics, "fieldbridge_commit_batch_size_bucket", le="250.0") == commits
    assert (
        sample(metrics, "fieldbridge_ingest_payloads_total", source="http", outcome="accepted")
        == 2000
    )


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
