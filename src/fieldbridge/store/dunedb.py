"""The DUNE DB sink's record of the actions it creates, one per message."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from fieldbridge.model import DuneAction, DuneActionState
from fieldbridge.store.db import Database, Row

COLUMNS = (
    "sink, message_id, state, component_uuid, form_id, readings, action_id, attempts, "
    "intended_at, created_at"
)


class DuneActionQueries:
    db: Database

    async def dune_actions(self, sink: str, message_ids: Sequence[int]) -> dict[int, DuneAction]:
        """The records of these messages that exist, by message id."""
        out: dict[int, DuneAction] = {}
        ids = list(message_ids)
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            rows = await self.db.fetchall(
                f"SELECT {COLUMNS} FROM dunedb_actions WHERE sink = ? AND message_id IN ({marks})",
                [sink, *chunk],
            )
            out.update({int(r[1]): _action(r) for r in rows})
        return out

    async def list_dune_actions(self, sink: str, *, limit: int = 1000) -> list[DuneAction]:
        rows = await self.db.fetchall(
            f"SELECT {COLUMNS} FROM dunedb_actions WHERE sink = ? ORDER BY message_id LIMIT ?",
            (sink, limit),
        )
        return [_action(r) for r in rows]

    async def intend_dune_action(
        self,
        sink: str,
        message_id: int,
        *,
        component_uuid: str,
        form_id: str,
        readings: Sequence[Mapping[str, Any]],
    ) -> DuneAction:
        """Record, before the POST, that an action for this message is about to be created;
        `attempts` counts the POSTs that may have reached the DB. Return the record, which
        may say it was created already."""
        now = time.time()
        async with self.db.transaction() as tx:
            await tx.execute(
                "INSERT INTO dunedb_actions (sink, message_id, state, component_uuid, form_id, "
                "readings, attempts, intended_at) VALUES (?, ?, ?, ?, ?, ?, 1, ?) "
                "ON CONFLICT (sink, message_id) DO UPDATE SET "
                "attempts = dunedb_actions.attempts + 1 "
                "WHERE dunedb_actions.state = ?",
                (
                    sink,
                    message_id,
                    DuneActionState.INTENDED,
                    component_uuid,
                    form_id,
                    orjson.dumps(list(readings)).decode(),
                    now,
                    DuneActionState.INTENDED,
                ),
            )
            rows = await tx.fetchall(
                f"SELECT {COLUMNS} FROM dunedb_actions WHERE sink = ? AND message_id = ?",
                (sink, message_id),
            )
        return _action(rows[0])

    async def confirm_dune_action(self, sink: str, message_id: int, action_id: str) -> None:
        """The DB created the action: keep its id; the message never makes another."""
        async with self.db.transaction() as tx:
            await tx.execute(
                "UPDATE dunedb_actions SET state = ?, action_id = ?, created_at = ? "
                "WHERE sink = ? AND message_id = ?",
                (DuneActionState.CREATED, action_id, time.time(), sink, message_id),
            )

    async def release_dune_intent(self, sink: str, message_id: int) -> None:
        """The last POST surely created nothing (refused, or never sent): uncount it, and drop
        the record when no POST of it may have reached the DB."""
        async with self.db.transaction() as tx:
            await tx.execute(
                "UPDATE dunedb_actions SET attempts = attempts - 1 "
                "WHERE sink = ? AND message_id = ? AND state = ?",
                (sink, message_id, DuneActionState.INTENDED),
            )
            await tx.execute(
                "DELETE FROM dunedb_actions WHERE sink = ? AND message_id = ? AND state = ? "
                "AND attempts <= 0",
                (sink, message_id, DuneActionState.INTENDED),
            )


def _action(row: Row) -> DuneAction:
    sink, message_id, state, component, form_id, readings, action_id = row[:7]
    attempts, intended_at, created_at = row[7:]
    return DuneAction(
        sink=sink,
        message_id=int(message_id),
        state=DuneActionState(state),
        component_uuid=component,
        form_id=form_id,
        readings=tuple(orjson.loads(readings)),
        action_id=action_id,
        attempts=int(attempts),
        intended_at=float(intended_at),
        created_at=None if created_at is None else float(created_at),
    )
