"""What a destination plugin implements, and how a sink's route picks messages."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from fieldbridge.model import JournalEntry
from fieldbridge.plugin import RouteSettings

if TYPE_CHECKING:
    from fieldbridge.store import Store


@dataclass(frozen=True, slots=True)
class Gate:
    """What a destination says, each cycle, about sending now (e.g. read from keys another
    program writes): whether to send at all, and the interval between sends."""

    open: bool = True
    interval: float | None = None  # seconds; None: the sink's `interval` setting
    why: str | None = None  # shown while closed


class Destination(ABC):
    """Renders and sends batches to one destination.

    `send` returns when the destination confirmed the batch and raises
    RetryableDeliveryError or PermanentDeliveryError otherwise. Opening and closing
    connections belongs in `__aenter__`/`__aexit__`.
    """

    wants_payload: bool = False  # whether entries must carry the raw payload
    # Whether the destination reads the readings of the messages it is given from the store
    # itself (bound with `bind`; e.g. packed in the journal row, JournalEntry.packed): the engine
    # then reads messages without them. Entries of a dead-letter retry, and batch messages,
    # still come with `readings`; such a destination takes both.
    fetches_readings: bool = False
    # At most this many messages per send, and the cursor moves after each send: for a
    # destination that takes one record per request, so a retry or restart resends none of
    # the records it took before (None: the whole batch the route chose, cursor after it).
    max_batch: int | None = None
    # Whether the destination sends a batch message (a Redis stream source's XREAD batch,
    # journal = "batch") from its payload itself; else the engine gives it its readings.
    sends_batches: bool = False

    def bind(self, store: Store) -> None:  # noqa: B027 - optional hook, empty by design
        """Called once by the sink runner: a destination that writes back to the store (e.g.
        queues downlinks from the answers it gets) keeps it. Most ignore it."""

    def takes(self, entry: JournalEntry) -> bool:
        """Whether this is a kind of message the destination handles at all (a Trap.NZ sink
        takes trap events only); others pass by uncounted. Most take everything."""
        return True

    def skip_reason(self, entry: JournalEntry) -> str | None:
        """Why the destination will not send a message its route chose (e.g. "bad_event"),
        counted by reason; None: send it."""
        return None

    async def gate(self) -> Gate | None:
        """Read before each batch; None (most destinations): the sink's settings decide."""
        return None

    def health(self) -> Mapping[str, Any] | None:
        """What /healthz shows of the destination besides the sink's state (e.g. how getting
        its OAuth token goes); None: nothing."""
        return None

    async def prepare(self, entries: Sequence[JournalEntry]) -> None:  # noqa: B027
        """Called with the next batch, read while the current one is sent: work that needs
        no answer (rendering) can be done now, beside the current batch's requests, and
        kept for `send` if it is then given the same messages. Most do nothing."""

    @abstractmethod
    async def send(self, entries: Sequence[JournalEntry]) -> None:
        """Deliver a batch; return once the destination confirmed it."""

    async def __aenter__(self) -> Destination:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


NOT_ROUTED = "not_routed"  # another source or kind: not this sink's business, not counted
UNKNOWN_DEVICE = "unknown_device"  # the route needs a flag and the registry lacks the device
FLAG_OFF = "flag_off"  # the device's flag (route.flag) is not on


def route_skip(
    route: RouteSettings, entry: JournalEntry, flags: Mapping[str, Mapping[str, bool]]
) -> str | None:
    """Why a sink with this route does not take the message, or None if it does."""
    if route.sources and entry.source not in route.sources:
        return NOT_ROUTED
    if route.kinds and (entry.kind or "") not in route.kinds:
        return NOT_ROUTED
    if not route.flag:
        return None
    device_flags = flags.get(entry.device)
    if device_flags is None:
        return UNKNOWN_DEVICE
    return None if device_flags.get(route.flag, False) else FLAG_OFF


def route_matches(
    route: RouteSettings, entry: JournalEntry, flags: Mapping[str, Mapping[str, bool]]
) -> bool:
    """Whether a sink with this route takes the message."""
    return route_skip(route, entry, flags) is None
