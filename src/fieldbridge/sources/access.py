"""The narrow, typed parts of the store a source may be given to shape its answers."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from fieldbridge.model import Device, Downlink, DownlinkState, JournalEntry, Subscriber, Transition


class DeviceReader(Protocol):
    """Reads the device registry (e.g. a device's attributes)."""

    async def get_device(self, device_id: str) -> Device | None: ...


class JournalReader(Protocol):
    """Reads back what a device sent recently."""

    async def recent_messages(
        self,
        device: str,
        *,
        since: float,
        kind: str | None = None,
        source: str | None = None,
        limit: int = 100,
    ) -> list[JournalEntry]: ...


class DownlinkQueue(Protocol):
    """The downlinks queued for devices, taken into answers and confirmed by later frames."""

    async def downlink_states(self) -> dict[str, set[DownlinkState]]: ...

    def on_downlink_queued(self, listener: Callable[[str], None]) -> None: ...

    async def pending_downlinks(self, device: str | None = None) -> list[Downlink]: ...

    async def take_downlinks(
        self,
        device: str,
        now: float,
        *,
        known_hash: int | None = None,
        expects_change: Callable[[bytes], bool] | None = None,
    ) -> list[Downlink]: ...

    async def confirm_downlinks(
        self, device: str, reported_hash: int | None, now: float
    ) -> int: ...

    async def fail_downlinks(self, ids: Sequence[int], reason: str, now: float) -> int: ...

    async def requeue_downlinks(self, ids: Sequence[int]) -> int: ...


class Liveness(Protocol):
    """Marks silent devices down and publishes each status change's notifications once."""

    async def mark_silent_down(
        self, now: float, *, source: str | None = None
    ) -> list[Transition]: ...

    async def pending_transitions(
        self, limit: int = 100, *, source: str | None = None
    ) -> list[Transition]: ...

    async def mark_notified(self, transition_id: int, at: float) -> None: ...

    async def subscribers(self, devices: Iterable[str]) -> dict[str, list[Subscriber]]: ...


class SourceCursors(Protocol):
    """Where a pulling source (a Redis stream) goes on after a restart, saved after commit."""

    async def source_cursor(self, source: str) -> str | None: ...

    async def save_source_cursor(self, source: str, position: str) -> None: ...

    async def newest_key(self, source: str) -> str | None: ...


@dataclass(frozen=True, slots=True)
class StoreAccess:
    """What of the store a source may use besides ingest, handed to it when it is built.

    A source commits only through ingest; these serve its answers (downlinks, token checks,
    the parts of an upload stored before a restart).
    """

    devices: DeviceReader
    journal: JournalReader
    downlinks: DownlinkQueue
    liveness: Liveness
    cursors: SourceCursors
