"""Quarantine re-ingest: a kept payload decoded again with its source's current codec."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fieldbridge.ingest import Ingest
from fieldbridge.model import Accepted
from fieldbridge.plugin import SourceSettings
from fieldbridge.store import Store


class CannotReingest(Exception):
    """Why a quarantined payload was not stored; `code` names the case for scripts."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Reingested:
    """A quarantined payload now stored: its journal messages; it left the quarantine."""

    quarantine_id: int
    source: str
    message_ids: tuple[int, ...]
    duplicates: int
    quarantined: tuple[int, ...]  # parts the codec still refused, each quarantined anew


async def reingest(
    store: Store,
    ingest: Ingest,
    sources: Sequence[tuple[str, SourceSettings]],
    quarantine_id: int,
) -> Reingested:
    """Decode quarantined payload `quarantine_id` again with the codec its source has now and
    commit it through ingest (so it becomes journal messages the sinks deliver); drop it from
    the quarantine once stored. CannotReingest when it is not there, its source is gone or
    has no codec, or the codec still refuses it (then it stays, as it was)."""
    entry = await store.get_quarantined(quarantine_id)
    if entry is None:
        raise CannotReingest("not_found", f"no quarantined payload {quarantine_id}")
    settings = next((s for _, s in sources if s.name == entry.source), None)
    if settings is None:
        raise CannotReingest(
            "unknown_source",
            f"source {entry.source!r} is not in the settings; its codec is unknown",
        )
    codec = settings.payload_codec()
    if codec is None:
        raise CannotReingest(
            "no_codec", f"source {entry.source!r} cannot decode a payload again on its own"
        )
    outcome = await ingest.submit(entry.source, entry.payload, codec, entry.meta, entry.received_at)
    if not isinstance(outcome, Accepted):
        # Ingest kept the refused payload a second time; the first copy is the one that stays.
        await store.drop_quarantined(outcome.quarantine_id)
        raise CannotReingest("still_refused", f"the codec still refuses it: {outcome.reason}")
    await store.drop_quarantined(quarantine_id)
    return Reingested(
        quarantine_id,
        entry.source,
        outcome.ids,
        outcome.duplicates,
        tuple(part.quarantine_id for part in outcome.quarantined),
    )
