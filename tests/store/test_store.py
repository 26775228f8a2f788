"""Every public Store query, on SQLite and PostgreSQL, against real databases."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pytest

from fieldbridge.errors import StoreError
from fieldbridge.model import Accepted, Decoded, Reading, Rejected
from fieldbridge.store import Pending, Store, open_store, parse_store_url
from tests.support.locks import sqlite_write_locked

T0 = 1_700_000_000.0


def record(
    device: str = "dev-1",
    *,
    key: str | None = None,
    value: float | None = 1.0,
    at: float = T0,
    kind: str | None = None,
    attributes: dict[str, Any] | None = None,
    raw: bytes | None = None,
    readings: Sequence[Reading] | None = None,
) -> Decoded:
    """One decoded message; one temperature reading unless `readings` says otherwise."""
    return Decoded(
        device,
        tuple(readings) if readings is not None else (Reading("temperature", value, at),),
        kind=kind,
        idempotency_key=key,
        attributes=attributes,
        raw=raw,
    )


def payload(
    *records: Decoded,
    source: str = "http",
    at: float = T0,
    body: bytes = b"{}",
    meta: str = '{"remote": "127.0.0.1"}',
) -> Pending:
    return Pending(source, at, meta, body, decoded=list(records))


def refused(
    reason: str,
    *,
    source: str = "http",
    at: float = T0,
    body: bytes = b"??",
    malformed: bool = False,
) -> Pending:
    return Pending(source, at, '{"remote": "127.0.0.1"}', body, reason=reason, malformed=malformed)


async def count(store: Store, table: str) -> int:
    rows = await store.db.fetchall(f"SELECT COUNT(*) FROM {table}")
    return int(rows[0][0])


async def counts(store: Store) -> dict[str, int]:
    tables = ("journal", "readings", "devices", "quarantine")
    return {t: await count(store, t) for t in tables}


async def accepted(store: Store, batch: Sequence[Pending]) -> list[Accepted]:
    outcomes = await store.commit(batch)
    assert all(isinstance(o, Accepted) for o in outcomes), outcomes
    return [o for o in outcomes if isinstance(o, Accepted)]


def is_sqlite(store_url: str) -> bool:
    return store_url.startswith("sqlite")


# --- commit -----------------------------------------------------------------------------------


async def test_new_messages_get_ascending_contiguous_ids(store: Store) -> None:
    first = await accepted(store, [payload(record("a")), payload(record("b")), payload(record())])
    second = await accepted(store, [payload(record("c")), payload(record("a"))])
    ids = [i for outcome in first + second for i in outcome.ids]
    assert ids == list(range(ids[0], ids[0] + 5))
    assert all(o.duplicates == 0 for o in first + second)
    assert await store.head_id() == ids[-1]
    assert [e.id for e in await store.read_journal(0, 10)] == ids


async def test_idempotency_key_is_unique_per_source(store: Store) -> None:
    (from_a,) = await accepted(store, [payload(record(key="k1"), source="a")])
    (from_b,) = await accepted(store, [payload(record(key="k1"), source="b")])
    (again_a,) = await accepted(store, [payload(record(key="k1", value=99.0), source="a")])
    assert from_a.ids != from_b.ids  # same key, other source: another message
    assert again_a == Accepted(from_a.ids, duplicates=1)
    assert await count(store, "journal") == 2
    assert await count(store, "readings") == 2


async def test_a_stored_key_among_new_ones(store: Store) -> None:
    """A batch of new keys holding one stored before (a redelivery; on SQLite the batch is
    first written without looking keys up, then written again): every new message stored once,
    the repeat answered with its first id, the device counted once a message, later ids after."""
    (first,) = await accepted(store, [payload(record(key="k5", value=5.0))])
    batch = [payload(record(key=f"k{n}", value=float(n))) for n in range(10)]
    outcomes = await accepted(store, batch)
    assert outcomes[5] == Accepted(first.ids, duplicates=1)
    new = [o.ids[0] for n, o in enumerate(outcomes) if n != 5]
    assert all(o.duplicates == 0 for n, o in enumerate(outcomes) if n != 5)
    assert new == list(range(first.ids[0] + 1, first.ids[0] + 10))  # no ids skipped
    assert await count(store, "journal") == 10
    assert await count(store, "readings") == 10
    device = await store.get_device("dev-1")
    assert device is not None and device.message_count == 10
    entries = await store.read_journal(0, 20)
    assert [e.id for e in entries] == sorted([first.ids[0], *new])
    assert [e.readings[0].value for e in entries] == [5.0] + [float(n) for n in range(10) if n != 5]
    (later,) = await accepted(store, [payload(record(key="k10"))])
    assert later.ids[0] > max(new)


async def test_duplicates_in_one_batch_and_across_batches(store: Store) -> None:
    first = await accepted(
        store,
        [
            payload(record(key="k1", value=1.0)),
            payload(record(key="k1", value=2.0)),  # a repeat inside the same batch
            payload(record(key="k2", value=3.0)),
            payload(record(value=4.0)),  # no key: always new
        ],
    )
    (k1,), (k2,), (plain,) = first[0].ids, first[2].ids, first[3].ids
    assert first[1] == Accepted((k1,), duplicates=1)
    assert [o.duplicates for o in first] == [0, 1, 0, 0]

    second = await accepted(
        store,
        [
            payload(record(key="k2", value=5.0), record(key="k3", value=6.0)),
            payload(record(key="k1", value=7.0)),
        ],
    )
    (k3,) = [i for i in second[0].ids if i not in (k1, k2, plain)]
    assert second[0] == Accepted((k2, k3), duplicates=1)
    assert second[1] == Accepted((k1,), duplicates=1)

    values = [r.reading.value for r in await store.list_readings("dev-1", limit=100)]
    assert sorted(v for v in values if v is not None) == [1.0, 3.0, 4.0, 6.0]  # no repeat added
    assert len(values) == 4
    device = await store.get_device("dev-1")
    assert device is not None and device.message_count == 4  # nor a count
    assert await count(store, "journal") == 4


async def test_rejected_payloads_go_to_quarantine_in_batch_order(store: Store) -> None:
    outcomes = await store.commit(
        [
            refused("body is not valid JSON", body=b"{oops", malformed=True),
            payload(record()),
            refused("device: required", body=b'{"readings": {}}', source="lora"),
        ]
    )
    bad_json, good, no_device = outcomes
    assert isinstance(good, Accepted)
    assert isinstance(bad_json, Rejected) and isinstance(no_device, Rejected)
    assert (bad_json.reason, bad_json.malformed) == ("body is not valid JSON", True)
    assert (no_device.reason, no_device.malformed) == ("device: required", False)
    assert bad_json.quarantine_id != no_device.quarantine_id

    kept = {q.id: q for q in await store.list_quarantine()}
    assert kept[bad_json.quarantine_id].payload == b"{oops"
    assert kept[bad_json.quarantine_id].source == "http"
    assert kept[bad_json.quarantine_id].meta == {"remote": "127.0.0.1"}
    assert kept[bad_json.quarantine_id].received_at == T0
    assert kept[no_device.quarantine_id].reason == "device: required"
    assert kept[no_device.quarantine_id].source == "lora"
    assert await count(store, "journal") == 1


async def test_rejected_without_reason_is_still_kept(store: Store) -> None:
    (outcome,) = await store.commit([Pending("http", T0, "{}", b"x")])
    assert isinstance(outcome, Rejected) and outcome.reason == "rejected"
    assert await store.count_quarantine() == 1


async def test_several_records_in_one_payload_make_several_messages(store: Store) -> None:
    body = b'[{"device": "a"}, {"device": "b"}, {"device": "c"}]'
    (outcome,) = await accepted(
        store,
        [
            payload(
                record("a", raw=b'{"device": "a"}'),
                record("b", raw=b'{"device": "b"}'),
                record("c"),  # no slice of its own: it keeps the whole payload
                body=body,
            )
        ],
    )
    assert len(outcome.ids) == 3
    entries = await store.read_journal(0, 10, with_payload=True)
    assert [e.id for e in entries] == list(outcome.ids)
    assert [e.device for e in entries] == ["a", "b", "c"]
    assert [e.payload for e in entries] == [b'{"device": "a"}', b'{"device": "b"}', body]
    assert all(len(e.readings) == 1 for e in entries)


async def test_keyed_readings_are_stored_once_per_device(store: Store) -> None:
    def frame(*keys: str, device: str = "efento-1") -> Decoded:
        # Keys name their instant, as the codecs' keys do: "ch1@60" is channel 1 at T0 + 60.
        return record(
            device,
            readings=[
                Reading("temperature", 20.0, T0 + int(k.split("@")[1]), 1, key=k) for k in keys
            ],
        )

    await accepted(store, [payload(frame("ch1@0", "ch1@60"))])
    # A resent frame (a new message) carrying the same samples plus one more, in one batch
    # with a copy of itself, and an unkeyed reading and another device with the same keys.
    await accepted(
        store,
        [
            payload(frame("ch1@0", "ch1@60", "ch1@120")),
            payload(frame("ch1@120")),
            payload(frame("ch1@0", device="efento-2")),
            payload(record("efento-1")),
        ],
    )
    rows = await store.db.fetchall("SELECT device, reading_key FROM readings")
    assert sorted((d, k or "") for d, k in rows) == [
        ("efento-1", ""),
        ("efento-1", "ch1@0"),
        ("efento-1", "ch1@120"),
        ("efento-1", "ch1@60"),
        ("efento-2", "ch1@0"),
    ]
    assert await count(store, "journal") == 5  # every frame is journaled; readings are not doubled
    entries = await store.read_journal(0, 10)
    assert entries[0].readings[1].key == "ch1@60"


async def test_device_registry_follows_messages(store: Store) -> None:
    await accepted(
        store,
        [payload(record("d", kind="thermo", attributes={"fw": "1.0", "site": "north"}), at=T0)],
    )
    await accepted(
        store,
        [
            # kind None keeps the known kind; attributes merge; last_seen follows the batch
            payload(record("d", attributes={"fw": "1.1"}), at=T0 + 10),
            payload(record("d", attributes={"battery": "ok"}), at=T0 + 20),
            payload(record("e"), source="lora", at=T0 + 20),
        ],
    )
    device = await store.get_device("d")
    assert device is not None
    assert (device.first_seen, device.last_seen, device.message_count) == (T0, T0 + 20, 3)
    assert device.kind == "thermo"
    assert device.source == "http"
    assert device.attributes == {"fw": "1.1", "site": "north", "battery": "ok"}
    assert device.flags == {}
    other = await store.get_device("e")
    assert other is not None and other.source == "lora" and other.kind is None

    await accepted(store, [payload(record("d", kind="thermo-v2"), at=T0 + 30)])
    device = await store.get_device("d")
    assert device is not None and device.kind == "thermo-v2" and device.message_count == 4


async def test_a_large_batch_is_stored_row_for_row_in_order(store: Store) -> None:
    """150 messages of 93 devices: on SQLite multi-row INSERTs of every chunk size
    (ROW_CHUNKS), each row with its own values, in batch order."""
    batch = [
        payload(
            record(f"dev-{n % 93}", key=f"k{n}", value=n / 4, at=T0 + n, kind=f"kind-{n % 3}"),
            at=T0 + n,
            body=f'{{"n": {n}}}'.encode(),
            meta=f'{{"n": {n}}}',
        )
        for n in range(150)
    ]
    outcomes = await accepted(store, batch)
    ids = [o.ids[0] for o in outcomes]
    assert ids == list(range(ids[0], ids[0] + 150))
    entries = await store.read_journal(ids[0] - 1, 200, with_payload=True)
    assert [e.id for e in entries] == ids
    for n, entry in enumerate(entries):
        assert (entry.device, entry.kind, entry.received_at) == (
            f"dev-{n % 93}",
            f"kind-{n % 3}",
            T0 + n,
        )
        assert (entry.meta, entry.payload) == ({"n": n}, f'{{"n": {n}}}'.encode())
        assert [(r.value, r.measured_at) for r in entry.readings] == [(n / 4, T0 + n)]
    again = await accepted(store, batch[:70])  # every key is known: the same ids come back
    assert [o.ids[0] for o in again] == ids[:70] and all(o.duplicates == 1 for o in again)
    assert await count(store, "devices") == 93
    for d in (0, 56, 92):
        device = await store.get_device(f"dev-{d}")
        assert device is not None
        seen = [n for n in range(150) if n % 93 == d]
        assert (device.message_count, device.first_seen, device.last_seen) == (
            len(seen),
            T0 + seen[0],
            T0 + seen[-1],
        )


async def test_rows_of_every_shape_in_one_batch(store: Store) -> None:
    """Messages with and without kind and key, readings with and without unit, extra and key
    (SQLite writes each shape with NULL literals): each stored as given, readings in order."""
    readings = [
        Reading("a", 1.0, T0),
        Reading("b", 2.0, T0 + 1, channel=3, unit="C"),
        Reading("c", None, T0 + 2, extra={"code": 7}),
        Reading("d", 4.0, T0 + 3, key="d@1"),
        Reading("e", 5.0, T0 + 4, channel=1),
    ]
    batch = [
        payload(
            record(
                f"dev-{n}",
                kind=None if n % 2 else f"kind-{n}",
                key=None if n % 3 else f"k{n}",
                readings=readings[n % 5 :] + readings[: n % 5],
            ),
            body=f"body-{n}".encode(),
        )
        for n in range(12)
    ]
    ids = [o.ids[0] for o in await accepted(store, batch)]
    entries = await store.read_journal(ids[0] - 1, 20, with_payload=True)
    assert [e.id for e in entries] == ids
    for n, entry in enumerate(entries):
        assert (entry.device, entry.kind, entry.payload) == (
            f"dev-{n}",
            None if n % 2 else f"kind-{n}",
            f"body-{n}".encode(),
        )
        assert list(entry.readings) == readings[n % 5 :] + readings[: n % 5]
    again = await accepted(store, batch)
    assert [o.duplicates for o in again] == [0 if n % 3 else 1 for n in range(12)]
    assert [o.ids[0] for n, o in enumerate(again) if n % 3 == 0] == ids[::3]


async def test_device_kind_within_one_batch(store: Store) -> None:
    await accepted(store, [payload(record("n")), payload(record("n", kind="probe"))])
    device = await store.get_device("n")
    assert device is not None and device.kind == "probe" and device.message_count == 2


# --- reading the journal ----------------------------------------------------------------------


async def test_read_journal_order_limit_readings_and_payload(store: Store) -> None:
    batch = [
        payload(
            record(
                f"dev-{n}",
                readings=[
                    Reading("temperature", 20.0 + n, T0 + n, channel=n, unit="C"),
                    Reading("status", None, T0 + n, extra={"code": n}),
                ],
                kind="thermo",
            ),
            at=T0 + n,
            body=f"body-{n}".encode(),
        )
        for n in range(5)
    ]
    ids = [o.ids[0] for o in await accepted(store, batch)]

    entries = await store.read_journal(0, 10)
    assert [e.id for e in entries] == ids
    assert all(e.payload == b"" for e in entries)  # not asked for
    first = entries[0]
    assert (first.source, first.device, first.kind, first.received_at) == (
        "http",
        "dev-0",
        "thermo",
        T0,
    )
    assert first.meta == {"remote": "127.0.0.1"}
    assert first.readings == (
        Reading("temperature", 20.0, T0, channel=0, unit="C"),
        Reading("status", None, T0, extra={"code": 0}),
    )
    assert entries[3].readings[0] == Reading("temperature", 23.0, T0 + 3, channel=3, unit="C")

    page = await store.read_journal(ids[1], 2, with_payload=True)
    assert [e.id for e in page] == ids[2:4]
    assert [e.payload for e in page] == [b"body-2", b"body-3"]
    assert all(len(e.readings) == 2 for e in page)
    assert await store.read_journal(ids[-1], 10) == []


async def test_journal_by_ids(store: Store) -> None:
    outcomes = await accepted(
        store, [payload(record(f"d{n}", value=float(n)), body=b"b%d" % n) for n in range(4)]
    )
    ids = [o.ids[0] for o in outcomes]
    found = await store.journal_by_ids([ids[3], ids[1], 999_999])
    assert [e.id for e in found] == [ids[1], ids[3]]  # in id order; unknown ids ignored
    assert [e.readings[0].value for e in found] == [1.0, 3.0]
    assert [e.payload for e in found] == [b"", b""]
    with_body = await store.journal_by_ids([ids[0]], with_payload=True)
    assert [e.payload for e in with_body] == [b"b0"]
    assert await store.journal_by_ids([]) == []


async def test_head_lag_and_first_id_since(store: Store) -> None:
    assert await store.head_id() == 0
    assert await store.lag(0) == (0, None)
    ids = [
        o.ids[0]
        for o in await accepted(store, [payload(record(), at=T0 + n * 10) for n in range(4)])
    ]
    assert await store.head_id() == ids[-1]
    assert await store.lag(0) == (4, T0)
    assert await store.lag(ids[1]) == (2, T0 + 20)
    assert await store.lag(ids[-1]) == (0, None)
    assert await store.first_id_since(T0 + 15) == ids[2]
    assert await store.first_id_since(T0 + 20) == ids[2]
    assert await store.first_id_since(0) == ids[0]
    assert await store.first_id_since(T0 + 31) is None


# --- nothing is half-written ------------------------------------------------------------------


def impatient_store(store_url: str) -> Store:
    """A store that gives up quickly on a lock instead of waiting out the default timeout."""
    if is_sqlite(store_url):
        return open_store(store_url, busy_timeout_ms=200)
    return open_store(f"{store_url}?options=-c%20lock_timeout%3D300")


@contextlib.contextmanager
def write_lock_held(store_url: str) -> Iterator[None]:
    """Another connection holds a lock the store's next ingest transaction needs.

    On SQLite that is the database's write lock, so the transaction cannot begin. On PostgreSQL
    it is the quarantine table, written last: the journal, readings and devices rows are already
    inserted when the transaction fails.
    """
    if is_sqlite(store_url):
        path = parse_store_url(store_url).sqlite_path
        assert path is not None
        with sqlite_write_locked(path):
            yield
        return
    with psycopg.connect(store_url) as conn:
        conn.execute("LOCK TABLE quarantine IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            conn.rollback()


@contextlib.contextmanager
def quarantine_insert_fails(store_url: str) -> Iterator[None]:
    """A trigger that makes every quarantine insert fail: the last step of an ingest commit."""
    if is_sqlite(store_url):
        path = parse_store_url(store_url).sqlite_path
        assert path is not None
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute(
            "CREATE TRIGGER fail_quarantine BEFORE INSERT ON quarantine "
            "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        )
        try:
            yield
        finally:
            conn.execute("DROP TRIGGER fail_quarantine")
            conn.close()
        return
    with psycopg.connect(store_url, autocommit=True) as pg:
        pg.execute(
            "CREATE FUNCTION fail_quarantine() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'injected failure'; END $$"
        )
        pg.execute(
            "CREATE TRIGGER fail_quarantine BEFORE INSERT ON quarantine "
            "FOR EACH ROW EXECUTE FUNCTION fail_quarantine()"
        )
        try:
            yield
        finally:
            pg.execute("DROP TRIGGER fail_quarantine ON quarantine")
            pg.execute("DROP FUNCTION fail_quarantine()")


def mixed_batch(tag: str) -> list[Pending]:
    """New devices, readings, an idempotency key and a rejected payload: every table is touched."""
    return [
        payload(record(f"new-{tag}-1", key=f"{tag}-k1", attributes={"a": 1})),
        payload(record(f"new-{tag}-2"), record("known", key=f"{tag}-k2")),
        refused("bad payload"),
    ]


async def test_store_failure_leaves_nothing_half_written(store_url: str) -> None:
    async with impatient_store(store_url) as store:
        await accepted(store, [payload(record("known"))])  # also opens the writer connection
        before = await counts(store)
        with write_lock_held(store_url), pytest.raises(StoreError) as failed:
            await store.commit(mixed_batch("a"))
        assert ("database is locked" if is_sqlite(store_url) else "lock timeout") in str(
            failed.value
        )
        assert await counts(store) == before
        assert await store.get_device("new-a-1") is None
        known = await store.get_device("known")
        assert known is not None and known.message_count == 1

        # The store works again, and the keys of the failed batch were never stored.
        outcomes = await store.commit(mixed_batch("a"))
        assert [type(o) for o in outcomes] == [Accepted, Accepted, Rejected]
        assert all(o.duplicates == 0 for o in outcomes if isinstance(o, Accepted))
        assert await counts(store) == {"journal": 4, "readings": 4, "devices": 3, "quarantine": 1}


async def test_failure_at_the_last_statement_rolls_back_the_earlier_ones(store_url: str) -> None:
    async with open_store(store_url) as store:
        await accepted(store, [payload(record("known"))])
        before = await counts(store)
        with quarantine_insert_fails(store_url), pytest.raises(StoreError, match="injected"):
            await store.commit(mixed_batch("b"))
        assert await counts(store) == before
        assert len(await store.read_journal(0, 10)) == 1
        outcomes = await store.commit(mixed_batch("b"))
        assert [type(o) for o in outcomes] == [Accepted, Accepted, Rejected]
        assert await counts(store) == {"journal": 4, "readings": 4, "devices": 3, "quarantine": 1}


async def test_nul_in_a_rejection_reason_does_not_fail_the_batch(store: Store) -> None:
    # Reasons can quote what a device sent; PostgreSQL text refuses NUL, so the store escapes it.
    outcomes = await store.commit(
        [payload(record("ok")), refused("codec error: ValueError: bad byte \x00 at 3")]
    )
    assert isinstance(outcomes[0], Accepted)
    rejected = outcomes[1]
    assert isinstance(rejected, Rejected)
    assert "\x00" not in rejected.reason and "bad byte" in rejected.reason
    (kept,) = await store.list_quarantine()
    assert kept.reason == rejected.reason


# --- devices, readings, quarantine ------------------------------------------------------------


async def test_list_get_and_update_devices(store: Store) -> None:
    await accepted(
        store,
        [
            payload(record("c-3", kind="soil")),
            payload(record("a-1", kind="thermo", attributes={"fw": "1"})),
            payload(record("b-2", kind="thermo")),
        ],
    )
    assert [d.id for d in await store.list_devices()] == ["a-1", "b-2", "c-3"]
    assert [d.id for d in await store.list_devices(kind="thermo")] == ["a-1", "b-2"]
    assert [d.id for d in await store.list_devices(limit=2)] == ["a-1", "b-2"]
    assert await store.list_devices(kind="nothing") == []
    assert await store.get_device("zzz") is None

    updated = await store.update_device(
        "a-1", flags={"upload_trapnz": True}, attributes={"site": "north"}, name="Paddock 1"
    )
    assert updated is not None
    assert updated.flags == {"upload_trapnz": True}
    assert updated.attributes == {"fw": "1", "site": "north"}
    assert updated.name == "Paddock 1"

    again = await store.update_device("a-1", flags={"upload_trapnz": False, "influx": True})
    assert again is not None
    assert again.flags == {"upload_trapnz": False, "influx": True}
    assert again.name == "Paddock 1"  # None keeps the name
    assert again.attributes == {"fw": "1", "site": "north"}
    assert again == await store.get_device("a-1")
    assert await store.update_device("nobody", flags={"x": True}) is None

    assert await store.device_flags({"a-1", "b-2", "nobody"}) == {
        "a-1": {"upload_trapnz": False, "influx": True},
        "b-2": {},
    }
    assert await store.device_flags(set()) == {}

    # A later message does not reset what an operator set.
    await accepted(store, [payload(record("a-1", attributes={"fw": "2"}))])
    device = await store.get_device("a-1")
    assert device is not None
    assert device.flags == {"upload_trapnz": False, "influx": True}
    assert device.name == "Paddock 1"
    assert device.attributes == {"fw": "2", "site": "north"}


async def test_list_readings(store: Store) -> None:
    # Measured times arrive out of order; readings come back in time order.
    times = [T0 + 30, T0 + 10, T0 + 50, T0 + 20, T0 + 40]
    await accepted(
        store,
        [payload(record("r", value=t - T0, at=t)) for t in times]
        + [payload(record("other", value=-1.0, at=T0 + 45))],
    )
    latest = await store.list_readings("r", limit=3)
    assert [s.reading.measured_at for s in latest] == [T0 + 30, T0 + 40, T0 + 50]
    assert [s.reading.value for s in latest] == [30.0, 40.0, 50.0]
    assert {s.device for s in latest} == {"r"}
    assert all(s.reading.quantity == "temperature" for s in latest)

    everything = await store.list_readings("r")
    assert [s.reading.value for s in everything] == [10.0, 20.0, 30.0, 40.0, 50.0]
    since = await store.list_readings("r", since=T0 + 20, limit=2)
    assert [s.reading.value for s in since] == [20.0, 30.0]  # the first two from `since`
    assert await store.list_readings("r", since=T0 + 51) == []
    assert await store.list_readings("nobody") == []

    ids = {e.device: e.id for e in await store.read_journal(0, 100) if e.device == "other"}
    (other,) = await store.list_readings("other")
    assert other.message_id == ids["other"]


async def test_list_and_count_quarantine(store: Store) -> None:
    outcomes = await store.commit(
        [refused(f"reason {n}", source="coap" if n % 2 else "http") for n in range(5)]
    )
    qids = [o.quarantine_id for o in outcomes if isinstance(o, Rejected)]
    assert await store.count_quarantine() == 5
    assert [q.id for q in await store.list_quarantine()] == qids[::-1]  # newest first
    assert [q.id for q in await store.list_quarantine(limit=2)] == qids[:2:-1]
    coap = await store.list_quarantine(source="coap")
    assert [q.reason for q in coap] == ["reason 3", "reason 1"]
    assert await store.list_quarantine(source="mqtt") == []


# --- sink state -------------------------------------------------------------------------------


async def test_sink_state_cursor_pause_and_replay(store: Store) -> None:
    fresh = await store.sink_state("hook")
    assert (fresh.name, fresh.cursor, fresh.paused, fresh.replay_from) == ("hook", 0, False, None)
    assert await store.sink_states() == []

    before = time.time()
    await store.save_progress("hook", cursor=42, state="running", last_error=None)
    state = await store.sink_state("hook")
    assert (state.cursor, state.state, state.last_error) == (42, "running", None)
    assert state.updated_at >= before - 1

    await store.save_progress("hook", cursor=None, state="backoff", last_error="HTTP 503")
    state = await store.sink_state("hook")
    assert (state.cursor, state.state, state.last_error) == (42, "backoff", "HTTP 503")

    await store.save_progress("new", cursor=None, state="error", last_error="refused")
    assert (await store.sink_state("new")).cursor == 0

    await store.set_paused("hook", True)
    assert (await store.sink_state("hook")).paused is True
    await store.set_paused("never-ran", True)  # pausing a sink before its first run is kept
    assert (await store.sink_state("never-ran")).paused is True
    await store.set_paused("hook", False)
    state = await store.sink_state("hook")
    assert state.paused is False and state.cursor == 42

    assert await store.take_replay("hook") is None  # nothing asked
    await store.request_replay("hook", 7)
    assert (await store.sink_state("hook")).replay_from == 7
    assert (await store.sink_state("hook")).cursor == 42  # the runner applies it, not the CLI
    assert await store.take_replay("hook") == 7
    state = await store.sink_state("hook")
    assert (state.cursor, state.replay_from) == (7, None)
    assert await store.take_replay("hook") is None

    await store.request_replay("hook", -5)
    assert await store.take_replay("hook") == 0
    assert await store.take_replay("unknown") is None

    assert [s.name for s in await store.sink_states()] == ["hook", "never-ran", "new"]
    assert await store.min_cursor(["hook", "new"]) == 0
    await store.save_progress("new", cursor=3, state="running", last_error=None)
    await store.save_progress("hook", cursor=9, state="running", last_error=None)
    assert await store.min_cursor(["hook", "new"]) == 3
    assert await store.min_cursor(["hook"]) == 9
    assert await store.min_cursor(["hook", "never-seen"]) == 0
    assert await store.min_cursor([]) == 0


async def test_dead_letters(store: Store) -> None:
    await store.add_dead_letter("hook", 5, 400, "bad field")
    await store.add_dead_letter("hook", 6, 422, "x" * 70_000)
    await store.add_dead_letter("influx", 5, None, "connection reset")
    await store.add_dead_letter("hook", 5, 409, "still bad")  # again: one row, one more attempt

    letters = await store.list_dead_letters()
    assert [(d.sink, d.message_id) for d in letters] == [("hook", 5), ("hook", 6), ("influx", 5)]
    first = letters[0]
    assert (first.attempts, first.status, first.body, first.state) == (2, 409, "still bad", "dead")
    assert letters[1].attempts == 1 and len(letters[1].body) == 65536  # bodies are capped
    assert letters[2].status is None
    assert await store.count_dead_letters("hook") == 2
    assert await store.count_dead_letters("influx") == 1
    assert await store.count_dead_letters("nothing") == 0
    assert [d.message_id for d in await store.list_dead_letters(sink="influx")] == [5]
    assert len(await store.list_dead_letters(limit=1)) == 1

    assert await store.mark_dead_letters(state="retry", sink="hook") == 2
    assert [d.message_id for d in await store.list_dead_letters(state="retry")] == [5, 6]
    assert await store.list_dead_letters(sink="influx", state="retry") == []
    assert await store.mark_dead_letters(state="dead", ids=[first.id]) == 1
    assert [d.message_id for d in await store.list_dead_letters(state="retry")] == [6]
    # A retried message that fails again is dead again, with one more attempt.
    await store.add_dead_letter("hook", 6, 400, "again")
    sixth = (await store.list_dead_letters(sink="hook"))[1]
    assert (sixth.state, sixth.attempts, sixth.body) == ("dead", 2, "again")

    await store.resolve_dead_letter(first.id)
    assert [d.message_id for d in await store.list_dead_letters(sink="hook")] == [6]
    assert await store.drop_dead_letters(ids=[letters[2].id]) == 1
    assert await store.count_dead_letters("influx") == 0
    await store.add_dead_letter("hook", 7, 400, "")
    await store.add_dead_letter("influx", 7, 400, "")
    # By message: what a sink has now delivered; an empty list matches none, not all.
    assert await store.drop_dead_letters(sink="hook", message_ids=[]) == 0
    assert await store.drop_dead_letters(sink="influx", message_ids=[7, 8]) == 1
    assert await store.count_dead_letters("hook") == 2
    assert await store.drop_dead_letters(sink="hook") == 2
    assert await store.list_dead_letters() == []
    assert await store.drop_dead_letters() == 0


# --- retention --------------------------------------------------------------------------------


async def test_prune_only_old_delivered_and_not_dead_lettered(store: Store) -> None:
    old = [payload(record(value=float(n), at=T0 + n), at=T0 + n) for n in range(6)]
    recent = [payload(record(value=float(n), at=T0 + 1000), at=T0 + 1000) for n in range(6, 8)]
    ids = [o.ids[0] for o in await accepted(store, old + recent)]
    await store.add_dead_letter("hook", ids[1], 400, "refused")

    # Everything is delivered up to ids[3]: ids[4], ids[5] are old but undelivered.
    pruned = await store.prune(older_than=T0 + 500, delivered_upto=ids[3])
    assert pruned == 3
    kept = [e.id for e in await store.read_journal(0, 100)]
    assert kept == [ids[1], ids[4], ids[5], ids[6], ids[7]]
    # Readings have their own retention: the pruned messages' readings are still there.
    assert len(await store.list_readings("dev-1")) == 8

    # Delivered everywhere, but too recent.
    assert await store.prune(older_than=T0 + 500, delivered_upto=ids[-1]) == 2
    assert [e.id for e in await store.read_journal(0, 100)] == [ids[1], ids[6], ids[7]]
    assert await store.prune(older_than=T0 + 500, delivered_upto=ids[-1]) == 0

    # The dead letter resolved, its message may go too.
    (letter,) = await store.list_dead_letters()
    await store.resolve_dead_letter(letter.id)
    assert await store.prune(older_than=T0 + 500, delivered_upto=ids[-1]) == 1

    # Readings of messages a sink has not delivered stay, however old.
    assert await store.prune_readings(T0 + 3, delivered_upto=ids[0] - 1) == 0
    assert await store.prune_readings(T0 + 3, delivered_upto=ids[-1]) == 3
    remaining = await store.list_readings("dev-1")
    assert [s.reading.measured_at for s in remaining] == [T0 + 3, T0 + 4, T0 + 5] + [T0 + 1000] * 2


async def test_pruning_everything_never_reuses_ids(store: Store) -> None:
    ids = [o.ids[0] for o in await accepted(store, [payload(record()) for _ in range(3)])]
    assert await store.prune(older_than=T0 + 1, delivered_upto=ids[-1]) == 3
    assert await store.head_id() == 0
    (later,) = await accepted(store, [payload(record())])
    # A sink whose cursor is ids[-1] must still see the new message.
    assert later.ids[0] > ids[-1]
