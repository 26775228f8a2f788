"""Redis stream source: reads a stream after its own cursor, saved once entries are committed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from fieldbridge.clients.redisconn import RedisError, open_redis, shown
from fieldbridge.codecs.redis_stream import (
    BATCH_META,
    Entry,
    batch_document,
    batch_payload,
    entry_order,
    entry_payload,
)
from fieldbridge.errors import StoreError
from fieldbridge.ingest import Ingest
from fieldbridge.model import Outcome
from fieldbridge.sources.access import SourceCursors
from fieldbridge.sources.redis_stream.settings import RedisStreamSettings

log = logging.getLogger("fieldbridge.sources.redis_stream")

Entries = Sequence[Entry]

FIRST = "0-0"  # XREAD after this id: the stream's first entry
FIRST_BACKOFF = 0.2  # seconds; doubles per failure up to max_backoff (full jitter)
# A stopping source waits this long for the batch it handed in to be committed (ingest
# outlives the sources and answers every payload; this only guards against a hung store).
DRAIN_TIMEOUT = 30.0
# Seconds between cursor saves while a backlog is read (each save is a transaction of its
# own); the cursor is saved at once when the source has caught up and when it stops. After a
# crash up to this much is read again: duplicates by their entry ids, stored once.
SAVE_EVERY = 1.0
AHEAD_BATCHES = 8  # XREAD batches read while one commits, handed in together after it


@dataclass(slots=True)
class StreamStats:
    """What the source has done, for status replies and /healthz."""

    read: int = 0  # entries handed to ingest
    committed: int = 0  # entries committed
    cursor: str | None = None  # the saved cursor: committed up to this entry id
    connected: bool = False
    last_error: str | None = None
    last_read_at: float | None = None
    reconnects: int = 0
    started_at: float = field(default_factory=time.time)


@dataclass(slots=True)
class _Batch:
    last_id: str
    size: int
    result: asyncio.Future[Outcome]


class RedisStreamSource:
    """Pulls `stream` in XREAD batches of `batch_size` after the saved cursor.

    A batch is one payload, committed in one transaction: the journal keeps the stream's
    order even when the store fails (a batch is in or out as a whole, and the next one is
    handed in only after it). While a batch commits, the next one is read. The cursor is
    saved in the store after commit (at most once a second while a backlog is read). Redis
    down or restarted: back off, reconnect, go on from the last committed entry; an entry
    read twice (stopped between commit and cursor save) is stored once, its entry id being the
    idempotency key.
    """

    def __init__(
        self, settings: RedisStreamSettings, ingest: Ingest, cursors: SourceCursors
    ) -> None:
        self.name = settings.name
        self.settings = settings
        self._ingest = ingest
        self._cursors = cursors
        self._codec = settings.payload_codec()
        self._batches = settings.journal == "batch"
        self._meta: dict[str, object] = {"stream": settings.stream}
        if self._batches:
            self._meta[BATCH_META] = True
        self._max_ahead = AHEAD_BATCHES * settings.batch_size
        self.stats = StreamStats()
        self._task: asyncio.Task[None] | None = None
        self._committed: str | None = None  # last entry id known committed
        self._batch: _Batch | None = None  # handed to ingest, not yet answered
        self._saved_at = 0.0  # loop time of the last cursor save

    async def __aenter__(self) -> RedisStreamSource:
        self._task = asyncio.create_task(self._run(), name=f"source-{self.name}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        failures = 0
        try:
            while True:
                client = self._client()
                try:
                    await self._pull(client)
                except (RedisError, OSError, StoreError) as exc:
                    failures += 1
                    if self._batches and isinstance(exc, StoreError):
                        # A commit that timed out may still have landed: start again from
                        # the newest stored batch, so no batch is stored twice in part.
                        self._committed = None
                    self.stats.connected = False
                    self.stats.last_error = str(exc) or type(exc).__name__
                    delay = random.uniform(
                        0, min(self.settings.max_backoff, FIRST_BACKOFF * 2 ** min(failures, 30))
                    )
                    log.warning(
                        "source %s: %s (%s); retrying in %.1f s from entry %s",
                        self.name,
                        self.stats.last_error,
                        shown(self.settings.url),
                        delay,
                        self._committed or "the start",
                    )
                    await self._settle()
                    await asyncio.sleep(delay)
                    self.stats.reconnects += 1
                else:
                    failures = 0
                finally:
                    with contextlib.suppress(Exception):
                        await client.aclose()
        finally:
            # Stopping: what was handed in is committed by ingest (which outlives us); keep
            # the exact place.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._drain()), DRAIN_TIMEOUT)

    async def _drain(self) -> None:
        await self._settle()
        await self._save()

    def _client(self) -> aioredis.Redis:
        password = self.settings.password
        return open_redis(
            self.settings.url,
            password=None if password is None else password.get_secret_value(),
            timeout=self.settings.timeout_s,
            block_ms=self.settings.block_ms,
            text=True,
        )

    async def _pull(self, client: aioredis.Redis) -> None:
        if self._committed is None:
            self._committed = await self._start(client)
        self.stats.connected = True
        self.stats.last_error = None
        loop = asyncio.get_running_loop()
        waiting: list[Entry] = []  # read while the last batch committed, not handed in yet
        while True:
            entries = waiting or await self._read(client, self._committed, block=True)
            waiting = []
            if not entries:
                await self._save()  # caught up: the exact place
                continue
            batch = await self._hand_in(entries)
            # Read on while this one commits (up to `max_ahead` entries); what was read goes
            # in the next payload, handed in after the commit, so the journal keeps the
            # stream's order and a slow store gets larger commits, not more of them.
            while not batch.result.done() and len(waiting) < self._max_ahead:
                more = await self._read(client, waiting[-1][0] if waiting else batch.last_id)
                if not more:
                    break
                waiting.extend(more)
            await self._settle()
            caught_up = not waiting and len(entries) < self.settings.batch_size
            if caught_up or loop.time() - self._saved_at >= SAVE_EVERY:
                await self._save()

    async def _read(self, client: aioredis.Redis, after: str, *, block: bool = False) -> Entries:
        reply = await client.xread(
            {self.settings.stream: after},
            count=self.settings.batch_size,
            block=self.settings.block_ms if block else None,
        )
        return reply[0][1] if reply else []

    async def _start(self, client: aioredis.Redis) -> str:
        """The saved cursor, else where `start_after_key` says, else the stream's start."""
        saved = await self._cursors.source_cursor(self.name)
        if saved is not None:
            self.stats.cursor = saved
        if self._batches:
            # The cursor is saved at most once a second: the newest stored batch may be
            # further on. Starting after it, a batch is never read again in part.
            newest = await self._cursors.newest_key(self.name)
            if newest is not None and (saved is None or _later(newest, saved)):
                return newest
        if saved is not None:
            return saved
        key = self.settings.start_after_key
        if key is None:
            return FIRST
        raw = await client.get(key)
        text = raw if isinstance(raw, str) else ""
        start = text.removeprefix("(")
        if start in ("", "-"):
            return FIRST
        log.info("source %s: no cursor yet; starting after entry %s (%s)", self.name, start, key)
        return start

    async def _hand_in(self, entries: Entries) -> _Batch:
        """Offer the entries as one payload once ingest has room."""
        if not self._ingest.has_room:
            await self._ingest.wait_for_room()  # back-pressure: the store is behind
        if self._batches:
            payload = batch_document(entries)
        else:
            payload = batch_payload([entry_payload(i, fields or {}) for i, fields in entries])
        now = time.time()
        result = self._ingest.offer(self.name, payload, self._codec, self._meta, now)
        self._batch = _Batch(entries[-1][0], len(entries), result)
        self.stats.read += len(entries)
        self.stats.last_read_at = now
        return self._batch

    async def _settle(self) -> None:
        """Wait for the batch in flight to be committed (StoreError: the store failed; it is
        read again from the last committed entry)."""
        batch = self._batch
        if batch is None:
            return
        try:
            await batch.result
        finally:
            self._batch = None
        self._committed = batch.last_id
        self.stats.committed += batch.size

    async def _save(self) -> None:
        """Save the cursor where the committed entries end, if it moved."""
        self._saved_at = asyncio.get_running_loop().time()
        if self._committed is not None and self._committed != self.stats.cursor:
            await self._cursors.save_source_cursor(self.name, self._committed)
            self.stats.cursor = self._committed


def _later(a: str, b: str) -> bool:
    """Whether entry id `a` comes after `b` (a position that is not an entry id never does)."""
    first, second = entry_order(a), entry_order(b)
    return first is not None and second is not None and first > second
