"""Downlink queries: payloads queued for a device until the answer to its next request."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fieldbridge.model import Downlink
from fieldbridge.store import jsoncol
from fieldbridge.store.db import Database, Row

DOWNLINK_COLUMNS = "id, device, payload, state, meta, created_at, sent_at, confirmed_at"
QUEUED, SENT, CONFIRMED, FAILED = "queued", "sent", "confirmed", "failed"


class DownlinkQueries:
    """Lifecycle of a downlink: queued -> sent (in an answer) -> confirmed (the device applied it).

    A downlink the device never applies can be given up ("failed"). meta keys the store reads
    or writes: "expect_hash_change" (default True: the device's configuration hash must change
    for the downlink to count as applied), "sent_hash" and "attempts" (written by
    take_downlinks: the hash the device had when the downlink left, and how often it left).
    """

    db: Database

    async def queue_downlink(
        self, device: str, payload: bytes, meta: Mapping[str, Any], *, now: float | None = None
    ) -> int:
        """Queue a payload for a device; returns the downlink's id."""
        async with self.db.transaction() as tx:
            rows = await tx.fetchall(
                "INSERT INTO downlinks (device, payload, state, meta, created_at) "
                "VALUES (?, ?, ?, ?, ?) RETURNING id",
                (device, payload, QUEUED, jsoncol.dump(meta), time.time() if now is None else now),
            )
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
        self, *, device: str | None = None, state: str | None = None, limit: int = 1000
    ) -> list[Downlink]:
        """Downlinks in any state, newest first."""
        clauses, params = [], []
        if device is not None:
            clauses.append("device = ?")
            params.append(device)
        if state is not None:
            clauses.append("state = ?")
            params.append(state)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self.db.fetchall(
            f"SELECT {DOWNLINK_COLUMNS} FROM downlinks {where} ORDER BY id DESC LIMIT ?",
            [*params, limit],
        )
        return [_downlink(r) for r in rows]

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

        known_hash is the configuration hash the device reports now (None: the hash of its
        last stored configuration); confirm_downlinks compares later hashes with it.
        expects_change(payload) fills in "expect_hash_change" where the queuer left it out.
        """
        lock = " FOR UPDATE" if self.db.dialect == "postgresql" else ""  # SQLite: BEGIN IMMEDIATE
        async with self.db.transaction() as tx:
            rows = await tx.fetchall(
                f"SELECT {DOWNLINK_COLUMNS} FROM downlinks WHERE device = ? AND state = ? "
                f"ORDER BY id{lock}",
                (device, QUEUED),
            )
            if not rows:
                return []
            if known_hash is None:
                attrs = await tx.fetchall("SELECT attributes FROM devices WHERE id = ?", (device,))
                stored = jsoncol.load(attrs[0][0]).get("configuration_hash") if attrs else None
                known_hash = stored if isinstance(stored, int) else None
            taken = []
            for row in rows:
                queued = _downlink(row)
                attempts = int(queued.meta.get("attempts", 0)) + 1
                meta = {**queued.meta, "sent_hash": known_hash, "attempts": attempts}
                if "expect_hash_change" not in meta and expects_change is not None:
                    meta["expect_hash_change"] = expects_change(queued.payload)
                await tx.execute(
                    "UPDATE downlinks SET state = ?, sent_at = ?, meta = ? WHERE id = ?",
                    (SENT, now, jsoncol.dump(meta), queued.id),
                )
                taken.append(
                    Downlink(queued.id, device, queued.payload, SENT, meta, queued.created_at, now)
                )
        return taken

    async def confirm_downlinks(
        self, device: str, configuration_hash: int | None, now: float
    ) -> int:
        """Confirm a device's sent downlinks that a new frame shows applied; returns how many.

        With a configuration hash (a /c frame): those expecting a hash change whose sent_hash
        differs from it, and those expecting none. Without (a /i frame): only those expecting
        no hash change (request-only downlinks, answered by the upload they asked for).
        """
        lock = " FOR UPDATE" if self.db.dialect == "postgresql" else ""
        async with self.db.transaction() as tx:
            rows = await tx.fetchall(
                f"SELECT id, meta FROM downlinks WHERE device = ? AND state = ? ORDER BY id{lock}",
                (device, SENT),
            )
            done = [
                int(did) for did, meta in rows if _applied(jsoncol.load(meta), configuration_hash)
            ]
            for did in done:
                await tx.execute(
                    "UPDATE downlinks SET state = ?, confirmed_at = ? WHERE id = ?",
                    (CONFIRMED, now, did),
                )
        return len(done)

    async def downlink_states(self) -> dict[str, set[str]]:
        """Devices with queued or sent-unconfirmed downlinks, and which of the two states."""
        rows = await self.db.fetchall(
            "SELECT DISTINCT device, state FROM downlinks WHERE state IN (?, ?)", (QUEUED, SENT)
        )
        out: dict[str, set[str]] = {}
        for device, state in rows:
            out.setdefault(device, set()).add(state)
        return out

    async def fail_downlinks(self, ids: Sequence[int], reason: str, now: float) -> int:
        """Give up on sent downlinks the device never applied; the reason goes into meta."""
        done = 0
        async with self.db.transaction() as tx:
            for did in ids:
                rows = await tx.fetchall(
                    "SELECT meta FROM downlinks WHERE id = ? AND state = ?", (did, SENT)
                )
                if not rows:
                    continue
                meta = {**jsoncol.load(rows[0][0]), "failed": reason, "failed_at": now}
                await tx.execute(
                    "UPDATE downlinks SET state = ?, meta = ? WHERE id = ?",
                    (FAILED, jsoncol.dump(meta), did),
                )
                done += 1
        return done

    async def requeue_downlinks(self, ids: Sequence[int]) -> int:
        """Put sent, unconfirmed downlinks back in the queue (their answer was lost)."""
        if not ids:
            return 0
        marks = ",".join("?" * len(ids))
        async with self.db.transaction() as tx:
            rows = await tx.fetchall(
                f"SELECT COUNT(*) FROM downlinks WHERE state = ? AND id IN ({marks})",
                [SENT, *ids],
            )
            await tx.execute(
                "UPDATE downlinks SET state = ?, sent_at = NULL "
                f"WHERE state = ? AND id IN ({marks})",
                [QUEUED, SENT, *ids],
            )
        return int(rows[0][0])


def _applied(meta: Mapping[str, Any], configuration_hash: int | None) -> bool:
    if not meta.get("expect_hash_change", True):
        return True
    if configuration_hash is None:
        return False
    sent_hash = meta.get("sent_hash")
    return sent_hash is None or sent_hash != configuration_hash


def _downlink(row: Row) -> Downlink:
    did, device, payload, state, meta, created, sent, confirmed = row
    return Downlink(
        id=int(did),
        device=device,
        payload=bytes(payload),
        state=state,
        meta=jsoncol.load(meta),
        created_at=created,
        sent_at=sent,
        confirmed_at=confirmed,
    )
