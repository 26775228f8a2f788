"""Journal queries: the group-commit write of a batch, and reading it back in order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cache
from itertools import chain, groupby
from operator import itemgetter

from fieldbridge.model import (
    Accepted,
    Decoded,
    JournalEntry,
    Outcome,
    Reading,
    ReadingRow,
    Refusal,
    Rejected,
    Role,
)
from fieldbridge.packed import pack
from fieldbridge.store import jsoncol
from fieldbridge.store.db import Database, Execute, ExecuteMany, Fetch, Plan, Row, Timeout
from fieldbridge.store.liveness import bring_back_up
from fieldbridge.store.network import ROLE_MERGE, Relays, apply_relays, higher_role, name_csv_values

# Taken by every PostgreSQL ingest transaction: ids then commit in id order across processes,
# so a sink reading "after its cursor" can never skip a row that commits late.
JOURNAL_LOCK = 0x6669656C64  # "field"
IN_CHUNK = 500
# SQLite takes a batch's rows in multi-row INSERTs of these sizes (largest first; at most 999
# parameters, SQLite's oldest limit). Python's sqlite3 gives up the GIL around every statement
# step: row by row (executemany), the writer thread waited for the GIL once a row behind the
# busy event loop (several milliseconds each time), now once per statement.
ROW_CHUNKS = (64, 16, 4, 1)
_MESSAGE_ID = itemgetter(0)  # of a reading row
ROW_COLUMNS = "message_id, quantity, value, measured_at, channel, unit, extra"  # ReadingRow
JOURNAL_INSERT = (
    "INSERT INTO journal (id, received_at, source, device, kind, meta, payload, idem_key, "
    "plain_readings)"
)
KIND, KEY = 4, 7  # of JOURNAL_INSERT's columns
READINGS_INSERT = (
    "INSERT INTO readings (message_id, seq, device, measured_at, quantity, channel, value, unit, "
    "extra, reading_key)"
)


@dataclass(slots=True)
class Pending:
    """One received payload after decoding: its messages, or why it was rejected."""

    source: str
    received_at: float
    meta_json: str
    payload: bytes
    decoded: list[Decoded] | None = None
    reason: str | None = None
    malformed: bool = False
    cause: str | None = None  # DecodeError.cause
    refused: list[Refusal] | None = None  # parts refused beside `decoded`: quarantined


class JournalQueries:
    db: Database

    async def commit(self, batch: Sequence[Pending]) -> list[Outcome]:
        """Write a batch in one transaction; outcomes follow the batch's order."""
        return await self.db.run(_commit(self.db.dialect, batch))

    async def read_journal(
        self,
        after: int,
        limit: int,
        *,
        with_payload: bool = False,
        rows: bool = False,
        readings: bool = True,
    ) -> list[JournalEntry]:
        """Up to `limit` messages with id > after, oldest first, with their readings: as
        Reading objects, or with `rows` as plain tuples in `JournalEntry.rows` (a sink that
        renders each reading straight into text saves building an object per reading), or
        without them (`readings=False`: the sink reads them itself), each with its packed
        plain readings (JournalEntry.packed)."""
        found = await self.db.fetchall(
            f"SELECT {_entry_columns(with_payload, packed=not readings)} FROM journal "
            "WHERE id > ? ORDER BY id LIMIT ?",
            (after, limit),
        )
        if not found or not readings:
            return [_entry(row) for row in found]
        if rows:
            rows_of = await self._rows_between(found[0][0], found[-1][0])
            return [_entry(row, rows=rows_of.get(row[0], ())) for row in found]
        by_message = await self._readings_between(found[0][0], found[-1][0])
        return [_entry(row, by_message.get(row[0], ())) for row in found]

    async def _rows_between(self, first: int, last: int) -> dict[int, tuple[ReadingRow, ...]]:
        readings: list[ReadingRow] = await self.db.fetchall(
            f"SELECT {ROW_COLUMNS} FROM readings WHERE message_id >= ? AND message_id <= ? "
            "ORDER BY message_id, seq",
            (first, last),
        )
        # Grouped in C (groupby), not by a walk in Python: this runs once per reading.
        return {mid: tuple(rows) for mid, rows in groupby(readings, _MESSAGE_ID)}

    async def reading_rows(self, ids: Sequence[int]) -> dict[int, tuple[ReadingRow, ...]]:
        """The readings of the messages `ids` as rows (JournalEntry.rows), by message."""
        out: dict[int, tuple[ReadingRow, ...]] = {}
        for chunk in _chunks(sorted(set(ids))):
            found: list[ReadingRow] = await self.db.fetchall(
                f"SELECT {ROW_COLUMNS} FROM readings "
                f"WHERE message_id IN ({','.join('?' * len(chunk))}) ORDER BY message_id, seq",
                chunk,
            )
            out.update((mid, tuple(rows)) for mid, rows in groupby(found, _MESSAGE_ID))
        return out

    async def journal_by_ids(
        self, ids: Sequence[int], *, with_payload: bool = False
    ) -> list[JournalEntry]:
        out: list[JournalEntry] = []
        for chunk in _chunks(sorted(ids)):
            marks = ",".join("?" * len(chunk))
            rows = await self.db.fetchall(
                f"SELECT {_entry_columns(with_payload)} "
                f"FROM journal WHERE id IN ({marks}) ORDER BY id",
                chunk,
            )
            for row in rows:
                readings = await self._readings_between(row[0], row[0])
                out.append(_entry(row, readings.get(row[0], ())))
        return out

    async def _readings_between(self, first: int, last: int) -> dict[int, tuple[Reading, ...]]:
        rows = await self.db.fetchall(
            "SELECT message_id, quantity, value, measured_at, channel, unit, extra, reading_key "
            "FROM readings WHERE message_id >= ? AND message_id <= ? ORDER BY message_id, seq",
            (first, last),
        )
        grouped: dict[int, list[Reading]] = {}
        for mid, quantity, value, measured_at, channel, unit, extra, key in rows:
            grouped.setdefault(mid, []).append(
                Reading(
                    quantity, value, measured_at, channel, unit, jsoncol.load(extra) or None, key
                )
            )
        return {mid: tuple(readings) for mid, readings in grouped.items()}

    async def head_id(self) -> int:
        rows = await self.db.fetchall("SELECT COALESCE(MAX(id), 0) FROM journal")
        return int(rows[0][0])

    async def lag(self, cursor: int) -> tuple[int, float | None]:
        """Messages after a cursor, and when the oldest of them was received."""
        rows = await self.db.fetchall(
            "SELECT COUNT(*), MIN(received_at) FROM journal WHERE id > ?", (cursor,)
        )
        count, oldest = rows[0]
        return int(count), (float(oldest) if oldest is not None else None)

    async def first_id_since(self, since: float) -> int | None:
        rows = await self.db.fetchall(
            "SELECT MIN(id) FROM journal WHERE received_at >= ?", (since,)
        )
        return int(rows[0][0]) if rows[0][0] is not None else None

    async def prune(
        self,
        older_than: float,
        delivered_upto: int,
        *,
        dry_run: bool = False,
        within: Timeout | None = None,
    ) -> int:
        """Delete journal rows older than a time that every sink has delivered; return how many
        (with `dry_run`, only count them). `within` bounds it (default store.commit_timeout_s)."""
        # Dead-lettered messages count as undelivered: they stay for `deadletters retry`.
        where = (
            "WHERE received_at < ? AND id <= ? AND id NOT IN (SELECT message_id FROM dead_letters)"
        )
        return await self._delete_counted(
            "journal", where, (older_than, delivered_upto), dry_run, within
        )

    async def prune_readings(
        self,
        older_than: float,
        delivered_upto: int,
        *,
        dry_run: bool = False,
        within: Timeout | None = None,
    ) -> int:
        """Delete readings measured before a time whose messages every sink has delivered."""
        where = (
            "WHERE measured_at < ? AND message_id <= ? "
            "AND message_id NOT IN (SELECT message_id FROM dead_letters)"
        )
        return await self._delete_counted(
            "readings", where, (older_than, delivered_upto), dry_run, within
        )

    async def held_back(self, older_than: float, after: int) -> int:
        """Journal rows older than a time that a sink at cursor `after` has not delivered."""
        rows = await self.db.fetchall(
            "SELECT COUNT(*) FROM journal WHERE received_at < ? AND id > ?", (older_than, after)
        )
        return int(rows[0][0])

    async def _delete_counted(
        self,
        table: str,
        where: str,
        params: tuple[float, int],
        dry_run: bool,
        within: Timeout | None,
    ) -> int:
        if dry_run:
            rows = await self.db.fetchall(
                f"SELECT COUNT(*) FROM {table} {where}", params, within=within
            )
            return int(rows[0][0])
        async with self.db.transaction(within) as tx:
            rows = await tx.fetchall(f"SELECT COUNT(*) FROM {table} {where}", params)
            await tx.execute(f"DELETE FROM {table} {where}", params)
        return int(rows[0][0])


def _entry_columns(with_payload: bool, *, packed: bool = False) -> str:
    """The journal columns _entry reads, the payload and the packed readings NULL unless
    asked for."""
    return (
        "id, received_at, source, device, kind, meta, "
        f"{'payload' if with_payload else 'NULL'}, {'plain_readings' if packed else 'NULL'}"
    )


def _entry(
    row: Row, readings: tuple[Reading, ...] = (), rows: tuple[ReadingRow, ...] = ()
) -> JournalEntry:
    """A journal row (the columns of _entry_columns) as an entry."""
    mid, received_at, source, device, kind, meta, payload, packed = row
    return JournalEntry(
        mid,
        received_at,
        source,
        device,
        kind,
        {} if meta == "{}" else jsoncol.load(meta),  # "{}": most messages
        bytes(payload) if payload is not None else b"",
        readings,
        rows,
        packed,
    )


def _chunks(values: Sequence[int]) -> list[Sequence[int]]:
    return [values[i : i + IN_CHUNK] for i in range(0, len(values), IN_CHUNK)]


def _refuse_unregistered(batch: Sequence[Pending]) -> Plan[list[Pending]]:
    """The batch with payloads turned into rejections where a message requires a device that
    is not in the registry (a codec's registered_only option)."""
    wanted = sorted({d.device for p in batch for d in p.decoded or () if d.require_registered})
    known: set[str] = set()
    for i in range(0, len(wanted), IN_CHUNK):
        chunk = wanted[i : i + IN_CHUNK]
        marks = ",".join("?" * len(chunk))
        rows = yield Fetch(f"SELECT id FROM devices WHERE id IN ({marks})", chunk)
        known.update(str(row[0]) for row in rows or ())
    out: list[Pending] = []
    for p in batch:
        missing = next(
            (d.device for d in p.decoded or () if d.require_registered and d.device not in known),
            None,
        )
        if missing is None:
            out.append(p)
            continue
        reason = (
            f"device {missing} is not registered; add it with `fieldbridge devices add {missing}`"
        )
        out.append(
            replace(p, decoded=None, refused=None, reason=reason, cause="unregistered_device")
        )
    return out


def _existing_keys(dialect: str, keys: set[tuple[str, str]]) -> Plan[dict[tuple[str, str], int]]:
    """Journal ids of keys already stored; the lookup walks the (idem_key, source) index."""
    by_source: dict[str, list[str]] = {}
    for source, key in keys:
        by_source.setdefault(source, []).append(key)
    found: dict[tuple[str, str], int] = {}
    for source, wanted in by_source.items():
        if dialect == "postgresql":  # one array parameter: planned once, not per list length
            rows = yield Fetch(
                "SELECT idem_key, id FROM journal WHERE source = ? AND idem_key = ANY(?)",
                [source, wanted],
            )
            found.update({(source, key): int(mid) for key, mid in rows or ()})
            continue
        for i in range(0, len(wanted), IN_CHUNK):
            chunk = wanted[i : i + IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = yield Fetch(
                f"SELECT idem_key, id FROM journal WHERE source = ? AND idem_key IN ({marks})",
                [source, *chunk],
            )
            found.update({(source, key): int(mid) for key, mid in rows or ()})
    return found


def _allocate_ids(dialect: str, count: int) -> Plan[list[int]]:
    """Ids for `count` new journal rows, in order; the writer holds the journal lock."""
    if dialect == "postgresql":
        rows = yield Fetch("SELECT nextval('journal_id_seq') FROM generate_series(1, ?)", (count,))
        return [int(r[0]) for r in rows or ()]
    rows = yield Fetch(
        "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'journal'), 0), "
        "COALESCE((SELECT MAX(id) FROM journal), 0))"
    )
    start = int((rows or [(0,)])[0][0]) + 1
    return list(range(start, start + count))


def _commit(dialect: str, batch: Sequence[Pending]) -> Plan[list[Outcome]]:
    if dialect == "postgresql":
        yield Execute("SELECT pg_advisory_xact_lock(?)", (JOURNAL_LOCK,))
    count = _Count.of(batch)
    if count.registered_only:
        batch = yield from _refuse_unregistered(batch)
        count = _Count.of(batch)
    networked = count.networked
    if networked:
        batch = yield from name_csv_values(batch)
        count = _Count.of(batch)
    relays = Relays()
    records, keyed, keys = count.records, count.keyed, count.keys
    # On SQLite the keys are not looked up first when none repeats within the batch: the
    # journal rows go in with ON CONFLICT DO NOTHING, and only when fewer went in than were
    # sent (a key stored before: a redelivery) are they taken out again and the keys looked up.
    # The lookup cost about 0.5 µs a message; a batch of new messages skips it.
    optimistic = dialect == "sqlite" and bool(keys) and len(keys) == keyed
    known = (yield from _existing_keys(dialect, keys)) if keys and not optimistic else {}
    while True:
        # The common case: no key seen before and none twice in this batch, so every record
        # is new.
        repeats = bool(known) or len(keys) != keyed
        slots, new_count = _slots(batch, known) if repeats else (None, records)
        ids = (yield from _allocate_ids(dialect, new_count)) if new_count else []
        rows = _Rows.of(batch, slots, ids, relays, blob=bytearray if dialect == "sqlite" else None)
        if not optimistic:
            yield from rows.insert_journal(dialect, "")
            break
        before = yield Fetch("SELECT total_changes()")
        yield from rows.insert_journal(dialect, " ON CONFLICT DO NOTHING")
        after = yield Fetch("SELECT total_changes()")
        if _first(after) - _first(before) == len(ids):
            break
        # Out again, and their ids given back (AUTOINCREMENT counted them): no gap in the ids.
        yield Execute("DELETE FROM journal WHERE id >= ?", (ids[0],))
        yield Execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'journal'", (ids[0] - 1,))
        optimistic = False
        relays = Relays()
        known = yield from _existing_keys(dialect, keys)
    seen, outcomes = rows.seen, rows.outcomes
    # A keyed reading the device already has (a resent frame) is skipped, not stored twice;
    # a reading without a key never conflicts, so the plain ones may go first.
    if rows.plain_readings:
        yield ExecuteMany(
            f"{READINGS_INSERT} VALUES {_marks(10, (7, 8, 9))} ON CONFLICT DO NOTHING",
            rows.plain_readings,
        )
    if rows.readings:
        yield ExecuteMany(
            f"{READINGS_INSERT} VALUES {_marks(10)} ON CONFLICT DO NOTHING",
            rows.readings,
        )
    if seen:
        yield from _upsert_devices(dialect, seen)
    if networked:
        yield from apply_relays(relays)
    for index, p in enumerate(batch):
        if p.decoded is None:
            rejected = yield from _quarantine(p, p.payload, p.reason, p.cause, p.malformed)
            outcomes[index] = rejected
        elif p.refused:
            parts = []
            for refusal in p.refused:
                raw = p.payload if refusal.raw is None else refusal.raw
                parts.append((yield from _quarantine(p, raw, refusal.reason, refusal.cause)))
            accepted = outcomes[index]
            assert isinstance(accepted, Accepted)
            outcomes[index] = replace(accepted, quarantined=tuple(parts))
    return [o for o in outcomes if o is not None]


def _first(rows: list[Row] | None) -> int:
    """The first column of a one-row result."""
    return int((rows or [(0,)])[0][0])


@dataclass(slots=True)
class _Count:
    """A batch's records and idempotency keys, and whether any asks for a registered device
    or carries a network report: one pass over the batch for all."""

    records: int
    keyed: int
    keys: set[tuple[str, str]]  # (source, key)
    registered_only: bool
    networked: bool

    @classmethod
    def of(cls, batch: Sequence[Pending]) -> _Count:
        records = keyed = 0
        keys: set[tuple[str, str]] = set()
        registered_only = networked = False
        for p in batch:
            if p.decoded is None:
                continue
            records += len(p.decoded)
            for d in p.decoded:
                if d.idempotency_key is not None:
                    keyed += 1
                    keys.add((p.source, d.idempotency_key))
                if d.require_registered:
                    registered_only = True
                if d.report is not None:
                    networked = True
        return cls(records, keyed, keys, registered_only, networked)


@dataclass(slots=True)
class _Rows:
    """A batch's new journal and reading rows, by shape, what it says of each device, and the
    outcome of each payload (None for one to quarantine)."""

    # Journal rows by shape: a column that is None in every row of a statement is written as
    # a NULL literal rather than bound. Python's sqlite3 (3.11) binds None through its adapter
    # lookup, which looks up __adapt__ on a type and raises and clears an AttributeError: about
    # 0.25 µs per None bound, most of a plain reading's binding.
    full: list[tuple[object, ...]]
    no_kind: list[tuple[object, ...]]
    no_key: list[tuple[object, ...]]
    no_kind_no_key: list[tuple[object, ...]]
    readings: list[tuple[object, ...]]  # unit, extra or key set
    plain_readings: list[tuple[object, ...]]  # no unit, extra or key: most readings
    seen: dict[str, _Seen]
    outcomes: list[Outcome | None]

    @classmethod
    def of(
        cls,
        batch: Sequence[Pending],
        slots: list[int | None] | None,
        ids: list[int],
        relays: Relays,
        blob: type[bytearray] | None = None,
    ) -> _Rows:
        """`slots` as _slots gives them (None: every record is new), `ids` the new rows' ids;
        network reports go to `relays`. With `blob`, payloads are bound as bytearray: Python's
        sqlite3 binds bytes through the same adapter lookup as None, bytearray directly (about
        0.2 µs less a row, the copy included)."""
        full: list[tuple[object, ...]] = []
        no_kind: list[tuple[object, ...]] = []
        no_key: list[tuple[object, ...]] = []
        no_kind_no_key: list[tuple[object, ...]] = []
        readings: list[tuple[object, ...]] = []
        plain: list[tuple[object, ...]] = []
        seen: dict[str, _Seen] = {}
        outcomes: list[Outcome | None] = []
        next_new = 0
        slot_index = 0
        for p in batch:
            if p.decoded is None:
                outcomes.append(None)
                continue
            message_ids: list[int] = []
            duplicates = 0
            received_at, source, meta_json = p.received_at, p.source, p.meta_json
            for d in p.decoded:
                if slots is not None:
                    slot = slots[slot_index]
                    slot_index += 1
                    if slot is not None:
                        message_ids.append(slot if slot > 0 else ids[-slot - 1])
                        duplicates += 1
                        continue
                mid = ids[next_new]
                next_new += 1
                message_ids.append(mid)
                device, kind, key = d.device, d.kind, d.idempotency_key
                body: bytes | bytearray = p.payload if d.raw is None else d.raw
                if blob is not None:
                    body = blob(body)
                packed = pack(d.readings)
                if kind is None:
                    if key is None:
                        no_kind_no_key.append(
                            (mid, received_at, source, device, meta_json, body, packed)
                        )
                    else:
                        no_kind.append(
                            (mid, received_at, source, device, meta_json, body, key, packed)
                        )
                elif key is None:
                    no_key.append((mid, received_at, source, device, kind, meta_json, body, packed))
                else:
                    full.append(
                        (mid, received_at, source, device, kind, meta_json, body, key, packed)
                    )
                for seq, r in enumerate(d.readings):
                    if r.unit is None and r.key is None and not r.extra:
                        plain.append(
                            (mid, seq, device, r.measured_at, r.quantity, r.channel, r.value)
                        )
                        continue
                    extra = jsoncol.dump_or_none(r.extra) if r.extra else None
                    readings.append(
                        (mid, seq, device, r.measured_at, r.quantity, r.channel, r.value, r.unit,
                         extra, r.key)
                    )  # fmt: skip
                entry = seen.get(device)
                if entry is None:
                    entry = seen[device] = _Seen(
                        kind, source, received_at, received_at, 0, {}, d.report is None
                    )
                elif kind is not None:
                    entry.kind = kind
                entry.last = received_at
                entry.count += 1
                if d.attributes is not None or d.report is not None:
                    entry.note(d)
                    if d.report is not None:
                        relays.note(d, received_at, source)
            outcomes.append(Accepted(tuple(message_ids), duplicates))
        return cls(full, no_kind, no_key, no_kind_no_key, readings, plain, seen, outcomes)

    def insert_journal(self, dialect: str, tail: str) -> Plan[None]:
        for rows, nulls in (
            (self.full, ()),
            (self.no_kind, (KIND,)),
            (self.no_key, (KEY,)),
            (self.no_kind_no_key, (KIND, KEY)),
        ):
            if rows:
                yield from _insert(dialect, JOURNAL_INSERT, _marks(9, nulls), tail, rows)


def _insert(
    dialect: str, head: str, one: str, tail: str, rows: Sequence[tuple[object, ...]]
) -> Plan[None]:
    """`head` VALUES `one` `tail` (`one` the row's marks, see _marks), for every row in
    order: on SQLite in multi-row statements (ROW_CHUNKS), elsewhere as one executemany."""
    if dialect != "sqlite":
        yield ExecuteMany(_values_sql(head, one, tail, 1), rows)
        return
    done = 0
    for size in ROW_CHUNKS:
        while len(rows) - done >= size:
            chunk = rows[done : done + size]
            yield Execute(_values_sql(head, one, tail, size), list(chain.from_iterable(chunk)))
            done += size


@cache
def _marks(width: int, nulls: tuple[int, ...] = ()) -> str:
    """One row of VALUES: a parameter for each of `width` columns, NULL at `nulls`."""
    return "(" + ", ".join("NULL" if i in nulls else "?" for i in range(width)) + ")"


@cache
def _values_sql(head: str, one: str, tail: str, count: int) -> str:
    return f"{head} VALUES {', '.join([one] * count)}{tail}"


def _quarantine(
    p: Pending, payload: bytes, reason: str | None, cause: str | None, malformed: bool = False
) -> Plan[Rejected]:
    # A reason may quote the payload; PostgreSQL text refuses NUL, which would fail the whole
    # batch and so every payload in it.
    text = (reason or "rejected").replace("\x00", "\\x00")
    rows = yield Fetch(
        "INSERT INTO quarantine (received_at, source, meta, payload, reason) "
        "VALUES (?, ?, ?, ?, ?) RETURNING id",
        (p.received_at, p.source, p.meta_json, payload, text),
    )
    return Rejected(text, int((rows or [(0,)])[0][0]), malformed, cause)


@dataclass(slots=True)
class _Seen:
    """What a batch says of one device."""

    kind: str | None
    source: str
    first: float
    last: float
    count: int
    attributes: dict[str, object]
    creates: bool  # False: only a registered device is updated (NetworkReport.creates)
    role: Role | None = None
    team: str | None = None

    def note(self, d: Decoded) -> None:
        """What a message says beyond kind and time (counted by the caller): attributes and
        a network report."""
        if d.attributes:
            self.attributes.update(d.attributes)
        report = d.report
        if report is not None:
            self.creates = self.creates or report.creates
            self.role = higher_role(self.role, report.role)
            if report.team is not None:
                self.team = report.team


def _slots(
    batch: Sequence[Pending], known: dict[tuple[str, str], int]
) -> tuple[list[int | None], int]:
    """Per record in batch order: the id of an earlier copy, or None for a new row; and how
    many rows are new. A repeat inside this batch gets -n, pointing at the n-th new row.
    """
    slots: list[int | None] = []
    known = dict(known)
    new_count = 0
    for p in batch:
        for d in p.decoded or ():
            key = None if d.idempotency_key is None else (p.source, d.idempotency_key)
            if key is not None and key in known:
                slots.append(known[key])
                continue
            slots.append(None)
            new_count += 1
            if key is not None:
                known[key] = -new_count
    return slots, new_count


def _upsert_devices(dialect: str, seen: dict[str, _Seen]) -> Plan[None]:
    known_only = [(e.last, e.last, e.count, dev) for dev, e in seen.items() if not e.creates]
    if known_only:
        yield ExecuteMany(
            "UPDATE devices SET last_seen = CASE WHEN ? > last_seen THEN ? ELSE last_seen END, "
            "message_count = message_count + ? WHERE id = ?",
            known_only,
        )
    rows: list[tuple[object, ...]] = [
        (dev, e.kind, e.source, e.first, e.last, e.count, e.role.value if e.role else None, e.team)
        for dev, e in seen.items()
        if e.creates
    ]
    if rows:
        yield from _insert_devices(dialect, rows)
    yield from bring_back_up({dev: e.last for dev, e in seen.items()})
    with_attrs = {dev: e.attributes for dev, e in seen.items() if e.attributes}
    if not with_attrs:
        return
    marks = ",".join("?" * len(with_attrs))
    sql = f"SELECT id, attributes FROM devices WHERE id IN ({marks})"
    found = yield Fetch(sql, list(with_attrs))
    updates = []
    for dev, text in found or ():
        merged = jsoncol.load(text)
        merged.update(with_attrs[dev])
        updates.append((jsoncol.dump(merged), dev))
    if updates:
        yield ExecuteMany("UPDATE devices SET attributes = ? WHERE id = ?", updates)


def _insert_devices(dialect: str, rows: list[tuple[object, ...]]) -> Plan[None]:
    """One row per device (ids unique), so a multi-row statement updates each at most once."""
    yield from _insert(
        dialect,
        "INSERT INTO devices (id, kind, source, first_seen, last_seen, message_count, role, team)",
        _marks(8),
        " ON CONFLICT (id) DO UPDATE SET "
        f"role = {ROLE_MERGE}, team = COALESCE(excluded.team, devices.team), "
        "kind = COALESCE(excluded.kind, devices.kind), "
        # A device registered ahead (`devices add`) takes its first message's source and time.
        "source = CASE WHEN devices.message_count = 0 THEN excluded.source "
        "ELSE devices.source END, "
        "first_seen = CASE WHEN devices.message_count = 0 THEN excluded.first_seen "
        "ELSE devices.first_seen END, "
        "last_seen = CASE WHEN excluded.last_seen > devices.last_seen "
        "THEN excluded.last_seen ELSE devices.last_seen END, "
        "message_count = devices.message_count + excluded.message_count",
        rows,
    )
