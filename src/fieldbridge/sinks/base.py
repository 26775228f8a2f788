"""What a destination plugin implements, and how a sink's route picks messages."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING

from fieldbridge.model import JournalEntry
from fieldbridge.plugin import RouteSettings

if TYPE_CHECKING:
    from fieldbridge.store import Store


class Destination(ABC):
    """Renders and sends batches to one destination.

    `send` returns when the destination confirmed the batch and raises
    RetryableDeliveryError or PermanentDeliveryError otherwise. Opening and closing
    connections belongs in `__aenter__`/`__aexit__`.
    """

    wants_payload: bool = False  # whether entries must carry the raw payload

    def bind(self, store: Store) -> None:  # noqa: B027 - optional hook, empty by design
        """Called once by the sink runner: a destination that writes back to the store (e.g.
        queues downlinks from the answers it gets) keeps it. Most ignore it."""

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


def route_matches(
    route: RouteSettings, entry: JournalEntry, flags: Mapping[str, Mapping[str, bool]]
) -> bool:
    """Whether a sink with this route takes the message."""
    if route.sources and entry.source not in route.sources:
        return False
    if route.kinds and (entry.kind or "") not in route.kinds:
        return False
    return not (route.flag and not flags.get(entry.device, {}).get(route.flag, False))
