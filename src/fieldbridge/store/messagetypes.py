"""Message type queries: the named, ordered fields that CSV lines are read by."""

from __future__ import annotations

import time

from fieldbridge.model import FieldType, MessageField, MessageType
from fieldbridge.store.db import Database


class MessageTypeQueries:
    db: Database

    async def save_message_type(self, message_type: MessageType, *, replace: bool) -> bool:
        """Store a message type; False if the name exists and `replace` is off. A replaced
        type applies to every device using it from the next commit on."""
        async with self.db.transaction() as tx:
            rows = await tx.fetchall(
                "SELECT 1 FROM message_types WHERE name = ?", (message_type.name,)
            )
            if rows and not replace:
                return False
            if rows:
                await tx.execute(
                    "UPDATE message_types SET description = ?, updated_at = ? WHERE name = ?",
                    (message_type.description, time.time(), message_type.name),
                )
                await tx.execute(
                    "DELETE FROM message_type_fields WHERE message_type = ?", (message_type.name,)
                )
            else:
                await tx.execute(
                    "INSERT INTO message_types (name, description, updated_at) VALUES (?, ?, ?)",
                    (message_type.name, message_type.description, time.time()),
                )
            await tx.executemany(
                "INSERT INTO message_type_fields (message_type, position, name, type, is_tag) "
                "VALUES (?, ?, ?, ?, ?)",
                [
                    (
                        message_type.name,
                        position,
                        None if spec is None else spec.name,
                        FieldType.FLOAT.value if spec is None else spec.type.value,
                        False if spec is None else spec.is_tag,
                    )
                    for position, spec in enumerate(message_type.fields)
                ],
            )
        return True

    async def list_message_types(self) -> list[MessageType]:
        heads = await self.db.fetchall("SELECT name, description FROM message_types ORDER BY name")
        rows = await self.db.fetchall(
            "SELECT message_type, position, name, type, is_tag FROM message_type_fields "
            "ORDER BY message_type, position"
        )
        fields: dict[str, list[MessageField | None]] = {}
        for mtype, _position, name, ftype, is_tag in rows:
            spec = None if name is None else MessageField(name, FieldType(ftype), bool(is_tag))
            fields.setdefault(mtype, []).append(spec)
        return [
            MessageType(name, tuple(fields.get(name, ())), description)
            for name, description in heads
        ]

    async def get_message_type(self, name: str) -> MessageType | None:
        return next((m for m in await self.list_message_types() if m.name == name), None)

    async def devices_using(self, name: str) -> list[str]:
        rows = await self.db.fetchall(
            "SELECT id FROM devices WHERE message_type = ? ORDER BY id", (name,)
        )
        return [str(row[0]) for row in rows]
