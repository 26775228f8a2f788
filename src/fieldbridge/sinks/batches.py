"""Batch messages (a Redis stream source with `journal = "batch"`) as sinks that send
readings see them: the readings are made from the payload, as the entry codec makes them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from fieldbridge.codecs.redis_stream import BATCH_META, batch_readings
from fieldbridge.model import JournalEntry
from fieldbridge.store import Store


async def with_readings(entries: Sequence[JournalEntry], store: Store) -> list[JournalEntry]:
    """`entries` with each batch message given its readings (its payload read if the sink
    did not ask for payloads); other messages as they are."""
    batches = [e for e in entries if BATCH_META in e.meta]
    if not batches:
        return list(entries)
    payloads = {e.id: e.payload for e in batches if e.payload}
    missing = [e.id for e in batches if not e.payload]
    if missing:
        payloads.update(
            (e.id, e.payload) for e in await store.journal_by_ids(missing, with_payload=True)
        )
    return [
        replace(e, readings=batch_readings(payloads[e.id]), rows=()) if BATCH_META in e.meta else e
        for e in entries
    ]
