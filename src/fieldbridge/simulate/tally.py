"""Counts of what one kind of simulated device sent, got acknowledged, and saw fail."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


class SendFailed(Exception):
    """A message was not acknowledged: refused by fieldbridge, timed out, or the target is
    unreachable. The text says which target and why."""


@dataclass
class Tally:
    """One kind's counts; `devices` are the ids its devices send as."""

    kind: str
    devices: list[str] = field(default_factory=list)
    sent: int = 0
    acknowledged: int = 0
    failed: int = 0
    last_error: str | None = None

    async def answer(self, sending: Awaitable[T]) -> T | None:
        """Await one message's send and acknowledgement, counting it: the answer, or None
        when it failed. A cancelled send (Ctrl-C) is neither acknowledged nor failed."""
        self.sent += 1
        try:
            result = await sending
        except SendFailed as exc:
            self.failed += 1
            self.last_error = str(exc)
            return None
        self.acknowledged += 1
        return result

    async def delivered(self, sending: Awaitable[object]) -> bool:
        """`answer` for a send whose acknowledgement carries nothing (an MQTT PUBACK)."""

        async def acknowledged() -> bool:
            await sending
            return True

        return await self.answer(acknowledged()) is not None

    def as_json(self) -> dict[str, Any]:
        return {
            "devices": list(self.devices),
            "sent": self.sent,
            "acknowledged": self.acknowledged,
            "failed": self.failed,
            "last_error": self.last_error,
        }
