"""Sink cursors, pause and replay requests, and dead letters."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fieldbridge.model import DeadLetter, DeadLetterState, SinkRunState, SinkState
from fieldbridge.store.db import Database, Row

STATE_COLUMNS = "name, cursor, paused, state, last_error, replay_from, updated_at"
DEAD_COLUMNS = "id, sink, message_id, attempts, status, body, created_at, state"


@dataclass(frozen=True, slots=True)
class Replay:
    """A replay asked for: the first message sent again, the journal's head then, how many."""

    name: str
    from_id: int
    head_id: int
    messages: int


class SinkStateQueries:
    db: Database

    async def sink_state(self, name: str) -> SinkState:
        """The stored state of a sink; a sink never seen starts at cursor 0."""
        rows = await self.db.fetchall(
            f"SELECT {STATE_COLUMNS} FROM sink_state WHERE name = ?", (name,)
        )
        if rows:
            return _state(rows[0])
        return SinkState(name, 0, False, SinkRunState.IDLE, None, None, 0.0)

    async def sink_states(self) -> list[SinkState]:
        rows = await self.db.fetchall(f"SELECT {STATE_COLUMNS} FROM sink_state ORDER BY name")
        return [_state(r) for r in rows]

    async def save_progress(
        self, name: str, *, cursor: int | None, state: SinkRunState, last_error: str | None
    ) -> None:
        """Record a sink's confirmed cursor (None keeps it), its state and last error."""
        async with self.db.transaction() as tx:
            await tx.execute(
                "INSERT INTO sink_state (name, cursor, state, last_error, updated_at) "
                "VALUES (?, COALESCE(?, 0), ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "cursor = COALESCE(?, sink_state.cursor), state = excluded.state, "
                "last_error = excluded.last_error, updated_at = excluded.updated_at",
                (name, cursor, state, last_error, time.time(), cursor),
            )

    async def set_paused(self, name: str, paused: bool) -> None:
        async with self.db.transaction() as tx:
            await tx.execute(
                "INSERT INTO sink_state (name, paused, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, "
                "updated_at = excluded.updated_at",
                (name, paused, time.time()),
            )

    async def request_replay(self, name: str, cursor: int) -> None:
        """Ask the running sink to go back to `cursor` (deliver everything after it again)."""
        async with self.db.transaction() as tx:
            await tx.execute(
                "INSERT INTO sink_state (name, replay_from, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET replay_from = excluded.replay_from, "
                "updated_at = excluded.updated_at",
                (name, max(cursor, 0), time.time()),
            )

    async def take_replay(self, name: str) -> int | None:
        """Apply a pending replay request: move the cursor there and clear the request."""
        async with self.db.transaction() as tx:
            rows = await tx.fetchall("SELECT replay_from FROM sink_state WHERE name = ?", (name,))
            if not rows or rows[0][0] is None:
                return None
            cursor = int(rows[0][0])
            await tx.execute(
                "UPDATE sink_state SET cursor = ?, replay_from = NULL, updated_at = ? "
                "WHERE name = ?",
                (cursor, time.time(), name),
            )
        return cursor

    async def forget_sink(self, name: str) -> tuple[bool, int]:
        """Delete a sink's stored state and its dead letters, so retention stops keeping
        messages for it; return whether it had state, and how many dead letters went."""
        async with self.db.transaction() as tx:
            had = await tx.fetchall("SELECT COUNT(*) FROM sink_state WHERE name = ?", (name,))
            dead = await tx.fetchall("SELECT COUNT(*) FROM dead_letters WHERE sink = ?", (name,))
            await tx.execute("DELETE FROM dead_letters WHERE sink = ?", (name,))
            await tx.execute("DELETE FROM sink_state WHERE name = ?", (name,))
            # What the sink kept besides: its skip counts, its token, its DUNE DB actions.
            await tx.execute("DELETE FROM sink_skips WHERE sink = ?", (name,))
            await tx.execute("DELETE FROM oauth_tokens WHERE key = ?", (f"sink:{name}",))
            await tx.execute("DELETE FROM dunedb_actions WHERE sink = ?", (name,))
        return int(had[0][0]) > 0, int(dead[0][0])

    async def add_skips(self, sink: str, counts: Mapping[str, int], last_message_id: int) -> None:
        """Count messages a sink skipped, by reason (they stay in the journal)."""
        rows = [(reason, n) for reason, n in sorted(counts.items()) if n]
        if not rows:
            return
        now = time.time()
        async with self.db.transaction() as tx:
            await tx.executemany(
                "INSERT INTO sink_skips (sink, reason, count, last_message_id, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (sink, reason) DO UPDATE SET "
                "count = sink_skips.count + excluded.count, "
                "last_message_id = excluded.last_message_id, updated_at = excluded.updated_at",
                [(sink, reason, n, last_message_id, now) for reason, n in rows],
            )

    async def sink_skips(self, sink: str) -> dict[str, int]:
        """How many messages a sink skipped, by reason."""
        rows = await self.db.fetchall(
            "SELECT reason, count FROM sink_skips WHERE sink = ? ORDER BY reason", (sink,)
        )
        return {reason: int(count) for reason, count in rows}

    async def min_cursor(self, names: Sequence[str]) -> int:
        """The lowest cursor among these sinks (0 for one that never ran)."""
        if not names:
            return 0
        states = [await self.sink_state(n) for n in names]
        return min(s.cursor for s in states)

    async def add_dead_letter(
        self, sink: str, message_id: int, status: int | None, body: str
    ) -> None:
        now = time.time()
        async with self.db.transaction() as tx:
            await tx.execute(
                "INSERT INTO dead_letters (sink, message_id, attempts, status, body, created_at, "
                "updated_at, state) VALUES (?, ?, 1, ?, ?, ?, ?, ?) "
                "ON CONFLICT (sink, message_id) DO UPDATE SET "
                "attempts = dead_letters.attempts + 1, status = excluded.status, "
                "body = excluded.body, updated_at = excluded.updated_at, state = excluded.state",
                (sink, message_id, status, body[:65536], now, now, DeadLetterState.DEAD),
            )

    async def list_dead_letters(
        self,
        *,
        sink: str | None = None,
        state: DeadLetterState | None = None,
        after: int | None = None,
        limit: int = 1000,
    ) -> list[DeadLetter]:
        """Dead letters by id; `after` is the last id of the previous page."""
        clauses, params = _filters(sink=sink, state=state, after=after)
        rows = await self.db.fetchall(
            f"SELECT {DEAD_COLUMNS} FROM dead_letters {clauses} ORDER BY id LIMIT ?",
            [*params, limit],
        )
        return [_dead(r) for r in rows]

    async def count_dead_letters(self, sink: str) -> int:
        rows = await self.db.fetchall("SELECT COUNT(*) FROM dead_letters WHERE sink = ?", (sink,))
        return int(rows[0][0])

    async def mark_dead_letters(
        self, *, state: DeadLetterState, sink: str | None = None, ids: Sequence[int] = ()
    ) -> int:
        """Set the state of the chosen dead letters; return how many."""
        clauses, params = _filters(sink=sink, ids=ids)
        async with self.db.transaction() as tx:
            rows = await tx.fetchall(f"SELECT COUNT(*) FROM dead_letters {clauses}", params)
            await tx.execute(
                f"UPDATE dead_letters SET state = ?, updated_at = ? {clauses}",
                [state, time.time(), *params],
            )
        return int(rows[0][0])

    async def drop_dead_letters(
        self,
        *,
        sink: str | None = None,
        ids: Sequence[int] = (),
        message_ids: Sequence[int] | None = None,
    ) -> int:
        """Forget the chosen dead letters (by their ids, or by the messages they hold)."""
        clauses, params = _filters(sink=sink, ids=ids, message_ids=message_ids)
        async with self.db.transaction() as tx:
            rows = await tx.fetchall(f"SELECT COUNT(*) FROM dead_letters {clauses}", params)
            await tx.execute(f"DELETE FROM dead_letters {clauses}", params)
        return int(rows[0][0])

    async def resolve_dead_letter(self, dead_id: int) -> None:
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM dead_letters WHERE id = ?", (dead_id,))


def _filters(
    *,
    sink: str | None = None,
    state: DeadLetterState | None = None,
    ids: Sequence[int] = (),
    message_ids: Sequence[int] | None = None,
    after: int | None = None,
) -> tuple[str, list[object]]:
    """WHERE clause for dead letters; an empty `message_ids` matches none (unlike `ids`)."""
    clauses: list[str] = []
    params: list[object] = []
    if sink is not None:
        clauses.append("sink = ?")
        params.append(sink)
    if state is not None:
        clauses.append("state = ?")
        params.append(state)
    if ids:
        clauses.append(f"id IN ({','.join('?' * len(ids))})")
        params.extend(ids)
    if message_ids is not None:
        marks = ",".join("?" * len(message_ids))
        clauses.append(f"message_id IN ({marks})" if message_ids else "1 = 0")
        params.extend(message_ids)
    if after is not None:
        clauses.append("id > ?")
        params.append(after)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), params


def _state(row: Row) -> SinkState:
    name, cursor, paused, state, last_error, replay_from, updated_at = row
    return SinkState(
        name,
        int(cursor),
        bool(paused),
        SinkRunState(state),
        last_error,
        int(replay_from) if replay_from is not None else None,
        float(updated_at),
    )


def _dead(row: Row) -> DeadLetter:
    dead_id, sink, message_id, attempts, status, body, created_at, state = row
    return DeadLetter(
        dead_id,
        sink,
        int(message_id),
        int(attempts),
        status,
        body,
        created_at,
        DeadLetterState(state),
    )
