"""Downlink queries: payloads queued for a device until the answer to its next request."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fieldbridge.model import Downlink, DownlinkState
from fieldbridge.store import jsoncol
from fieldbridge.store.db import Database, Row

DOWNLINK_COLUMNS = (
    "id, device, payload, state, meta, created_at, sent_at, confirmed_at, origin, fields, "
    "expect_hash_change, attempts, sent_hash, failed_reason, failed_at"
)
QUEUED, SENT, CONFIRMED, FAILED = (
    DownlinkState.QUEUED,
    DownlinkState.SENT,
    DownlinkState.CONFIRMED,
    DownlinkState.FAILED,
)


class DownlinkQueries:
    """Lifecycle of a downlink: queued -> sent (in an answer) -> confirmed (the device applied it).

    A downlink the device never applies can be given up ("failed"). Whether it was applied is
    told by a configuration hash the device reports (whatever its protocol calls it; the
    source passes the value): a downlink expecting a hash change is applied once the device
    reports a hash other than the one it had when the downlink was sent.
    """

    db: Database
    _queued_listeners: list[Callable[[str], None]]

    def on_downlink_queued(self, listener: Callable[[str], None]) -> None:
        """Call `listener(device)` after each downlink this process queues is committed, so a
        source in the same process answers with it at once; other processes' queues are seen
        when the source next polls."""
        self._queued_listeners.append(listener)

    async def queue_downlink(
        self,
        device: str,
        payload: bytes,
        *,
        origin: str | None = None,
        fields: Mapping[str, Any] | None = None,
        expect_hash_change: bool | None = None,
        meta: Mapping[str, Any] | None = None,
        now: float | None = None,
    ) -> int:
        """Queue a payload for a device; returns the downlink's id.

        expect_hash_change None leaves it to the source that sends it (take_downlinks).
        """
        async with self.db.transaction() as tx:
            rows = await tx.fetchall(
                "INSERT INTO downlinks (device, payload, state, meta, created_at, origin, "
                "fields, expect_hash_change) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    device,
                    payload,
                    QUEUED,
                    jsoncol.dump(meta),
                    time.time() if now is None else now,
                    origin,
                    None if fields is None else jsoncol.dump(fields),
                    expect_hash_change,
                ),
            )
        for listener in self._queued_listeners:
            listener(device)
        return int(rows[0][0])

    async def pending_downlinks(self, device: str | None = None) -> list[Downlink]:
        """Queued and sent-but-unconfirmed downlinks, oldest first."""
        where, params = ("AND device = ?", [device]) if device is not None else ("", [])
        rows = await self.db.fetchall(
            f"SELECT {DOWNLINK_COLUMNS} FROM downlinks WHERE state IN (?, ?) {where} ORDER BY id",
            [QUEUED, SENT, *params],
        )
        return [_downlink(r) for r in rows]

    async def list_downlinks(
        self,
        *,
        device: str | None = None,
        state: DownlinkState | None = None,
        before: int | None = None,
        limit: int = 1000,
    ) -> list[Downlink]:
        """Downlinks in any state, newest first; `before` is the last id of the previous page."""
        clauses: list[str] = []
        params: list[object] = []
        if device is not None:
            clauses.append("device = ?")
            params.append(device)
        if state is not None:
            clauses.append("state = ?")
            params.append(state)
        if before is not None:
            clauses.append("id < ?")
            params.append(before)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self.db.fetchall(
            f"SELECT {DOWNLINK_COLUMNS} FROM downlinks {where} ORDER BY id DESC LIMIT ?",
            [*params, limit],
        )
        return [_downlink(r) for r in rows]

    async def get_downlink(self, downlink_id: int) -> Downlink | None:
        rows = await self.db.fetchall(
            f"SELECT {DOWNLINK_COLUMNS} FROM downlinks WHERE id = ?", (downlink_id,)
        )
        return _downlink(rows[0]) if rows else None

    async def cancel_downlink(
        self, downlink_id: int, reason: str, now: float | None = None
    ) -> Downlink | None:
        """Give up a queued or sent (unconfirmed) downlink, so it is never sent (again); it
        becomes failed with `reason`. None if it is not queued or sent (or not there)."""
        async with self.db.transaction() as tx:
            rows = await tx.fetchall(
                "UPDATE downlinks SET state = ?, failed_reason = ?, failed_at = ? "
                f"WHERE id = ? AND state IN (?, ?) RETURNING {DOWNLINK_COLUMNS}",
                [FAILED, reason, time.time() if now is None else now, downlink_id, QUEUED, SENT],
            )
        return _downlink(rows[0]) if rows else None

    async def take_downlinks(
        self,
        device: str,
        now: float,
        *,
        known_hash: int | None = None,
        expects_change: Callable[[bytes], bool] | None = None,
    ) -> list[Downlink]:
        """Mark a device's queued downlinks sent and return them, oldest first, atomically:
        two concurrent callers never both get the same downlink.

        known_hash is the configuration hash the device has now (None: not known), kept as
        sent_hash for confirm_downlinks to compare later hashes with. expects_change(payload)
        fills in expect_hash_change where the queuer left it out.
        """
        lock = " FOR UPDATE" if self.db.dialect == "postgresql" else ""  # SQLite: BEGIN IMMEDIATE
        async with self.db.transaction() as tx:
            rows = await tx.fetchall(
                f"SELECT {DOWNLINK_COLUMNS} FROM downlinks WHERE device = ? AND state = ? "
                f"ORDER BY id{lock}",
                (device, QUEUED),
            )
            taken = []
            for row in rows:
                queued = _downlink(row)
                expect = queued.expect_hash_change
                if expect is None and expects_change is not None:
                    expect = expects_change(queued.payload)
                sent = dataclasses.replace(
                    queued,
                    state=SENT,
                    sent_at=now,
                    sent_hash=known_hash,
                    attempts=queued.attempts + 1,
                    expect_hash_change=expect,
                )
                await tx.execute(
                    "UPDATE downlinks SET state = ?, sent_at = ?, sent_hash = ?, attempts = ?, "
                    "expect_hash_change = ? WHERE id = ?",
                    (SENT, now, known_hash, sent.attempts, expect, queued.id),
                )
                taken.append(sent)
        return taken

    async def confirm_downlinks(self, device: str, reported_hash: int | None, now: float) -> int:
        """Confirm a device's sent downlinks that a new frame shows applied; returns how many.

        With a reported hash (the device uploaded its configuration): those expecting a hash
        change whose sent_hash differs from it, and those expecting none. Without (another
        upload): only those expecting no hash change (requests answered by the upload).
        """
        lock = " FOR UPDATE" if self.db.dialect == "postgresql" else ""
        async with self.db.transaction() as tx:
            rows = await tx.fetchall(
                "SELECT id, expect_hash_change, sent_hash FROM downlinks "
                f"WHERE device = ? AND state = ? ORDER BY id{lock}",
                (device, SENT),
            )
            done = [
                int(did)
                for did, expect, sent_hash in rows
                if _applied(_bool(expect), sent_hash, reported_hash)
            ]
            for did in done:
                await tx.execute(
                    "UPDATE downlinks SET state = ?, confirmed_at = ? WHERE id = ?",
                    (CONFIRMED, now, did),
                )
        return len(done)

    async def downlink_states(self) -> dict[str, set[DownlinkState]]:
        """Devices with queued or sent-unconfirmed downlinks, and which of the two states."""
        rows = await self.db.fetchall(
            "SELECT DISTINCT device, state FROM downlinks WHERE state IN (?, ?)", (QUEUED, SENT)
        )
        out: dict[str, set[DownlinkState]] = {}
        for device, state in rows:
            out.setdefault(device, set()).add(DownlinkState(state))
        return out

    async def fail_downlinks(self, ids: Sequence[int], reason: str, now: float) -> int:
        """Give up on sent downlinks the device never applied, saying why; returns how many."""
        if not ids:
            return 0
        marks = ",".join("?" * len(ids))
        async with self.db.transaction() as tx:
            rows = await tx.fetchall(
                "UPDATE downlinks SET state = ?, failed_reason = ?, failed_at = ? "
                f"WHERE state = ? AND id IN ({marks}) RETURNING id",
                [FAILED, reason, now, SENT, *ids],
            )
        return len(rows)

    async def requeue_downlinks(self, ids: Sequence[int]) -> int:
        """Put sent, unconfirmed downlinks back in the queue (their answer was lost)."""
        if not ids:
            return 0
        marks = ",".join("?" * len(ids))
        async with self.db.transaction() as tx:
            rows = await tx.fetchall(
                "UPDATE downlinks SET state = ?, sent_at = NULL "
                f"WHERE state = ? AND id IN ({marks}) RETURNING id",
                [QUEUED, SENT, *ids],
            )
        return len(rows)


def _applied(expect_change: bool | None, sent_hash: int | None, reported: int | None) -> bool:
    if expect_change is False:
        return True
    if reported is None:
        return False
    return sent_hash is None or sent_hash != reported


def _bool(value: object) -> bool | None:
    """SQLite keeps booleans as 0 and 1."""
    return None if value is None else bool(value)


def _downlink(row: Row) -> Downlink:
    (did, device, payload, state, meta, created, sent, confirmed, origin, fields, expect,
     attempts, sent_hash, failed_reason, failed_at) = row  # fmt: skip
    return Downlink(
        id=int(did),
        device=device,
        payload=bytes(payload),
        state=DownlinkState(state),
        meta=jsoncol.load(meta),
        created_at=created,
        sent_at=sent,
        confirmed_at=confirmed,
        origin=origin,
        fields=None if fields is None else jsoncol.load(fields),
        expect_hash_change=_bool(expect),
        attempts=int(attempts),
        sent_hash=None if sent_hash is None else int(sent_hash),
        failed_reason=failed_reason,
        failed_at=failed_at,
    )
