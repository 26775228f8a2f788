"""Redis stream source: reads a stream after its own cursor, saved once entries are committed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from fieldbridge.clients.redisconn import RedisError, open_redis, shown
from fieldbridge.codecs.redis_stream import StreamEntryCodec, entry_payload
from fieldbridge.errors import StoreError
from fieldbridge.ingest import Ingest
from fieldbridge.model import Outcome
from fieldbridge.sources.access import SourceCursors
from fieldbridge.sources.redis_stream.settings import RedisStreamSettings

log = logging.getLogger("fieldbridge.sources.redis_stream")

FIRST = "0-0"  # XREAD after this id: the stream's first entry
BATCHES_AHEAD = 2  # batches handed to ingest while an earlier one commits
FIRST_BACKOFF = 0.2  # seconds; doubles per failure up to max_backoff (full jitter)
# A stopping source waits this long for the batches it handed in to be committed (ingest
# outlives the sources and answers every payload; this only guards against a hung store).
DRAIN_TIMEOUT = 30.0


@dataclass(slots=True)
class StreamStats:
    """What the source has done, for status replies and /healthz."""

    read: int = 0  # entries handed to ingest
    committed: int = 0  # entries committed and covered by the saved cursor
    cursor: str | None = None  # the saved cursor: last committed entry id
    connected: bool = False
    last_error: str | None = None
    last_read_at: float | None = None
    reconnects: int = 0
    started_at: float = field(default_factory=time.time)


@dataclass(slots=True)
class _Batch:
    last_id: str
    results: list[asyncio.Future[Outcome]]


class RedisStreamSource:
    """Pulls `stream` in XREAD batches of `batch_size` after the saved cursor.

    Entries go to ingest at once (up to BATCHES_AHEAD batches in flight); the cursor is saved
    in the store after a batch is committed, in order. Redis down or restarted: back off,
    reconnect, go on from the last committed entry; an entry read twice (stopped between
    commit and cursor save) is stored once, its entry id being the idempotency key.
    """

    def __init__(
        self, settings: RedisStreamSettings, ingest: Ingest, cursors: SourceCursors
    ) -> None:
        self.name = settings.name
        self.settings = settings
        self._ingest = ingest
        self._cursors = cursors
        self._codec = StreamEntryCodec(settings.device, settings.kind)
        self._meta = {"stream": settings.stream}
        self.stats = StreamStats()
        self._task: asyncio.Task[None] | None = None
        self._committed: str | None = None  # last entry id known committed and saved
        self._batches: deque[_Batch] = deque()

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
                    await self._settle_all()
                    await asyncio.sleep(delay)
                    self.stats.reconnects += 1
                else:
                    failures = 0
                finally:
                    with contextlib.suppress(Exception):
                        await client.aclose()
        finally:
            # Stopping: what was handed in is committed by ingest (which outlives us); keep
            # the cursor of every batch that made it.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._settle_all()), DRAIN_TIMEOUT)

    def _client(self) -> aioredis.Redis:
        password = self.settings.password
        return open_redis(
            self.settings.url,
            password=None if password is None else password.get_secret_value(),
            timeout=self.settings.timeout_s,
            block_ms=self.settings.block_ms,
        )

    async def _pull(self, client: aioredis.Redis) -> None:
        if self._committed is None:
            self._committed = await self._start(client)
        position = self._committed
        stream = self.settings.stream
        count, block = self.settings.batch_size, self.settings.block_ms
        self.stats.connected = True
        self.stats.last_error = None
        while True:
            if len(self._batches) >= BATCHES_AHEAD:
                await self._settle_oldest()
            if not self._ingest.has_room:
                await self._ingest.wait_for_room()  # back-pressure: the store is behind
            # Do not block for new entries while a batch waits for its commit: settle it.
            reply = await client.xread(
                {stream: position}, count=count, block=None if self._batches else block
            )
            if not reply:
                if self._batches:
                    await self._settle_oldest()
                continue
            entries: Sequence[tuple[bytes, dict[bytes, bytes]]] = reply[0][1]
            if not entries:
                continue
            position = self._hand_in(entries)

    async def _start(self, client: aioredis.Redis) -> str:
        """The saved cursor, else where `start_after_key` says, else the stream's start."""
        saved = await self._cursors.source_cursor(self.name)
        if saved is not None:
            self.stats.cursor = saved
            return saved
        key = self.settings.start_after_key
        if key is None:
            return FIRST
        raw = await client.get(key)
        text = raw.decode() if raw is not None else ""
        start = text.removeprefix("(")
        if start in ("", "-"):
            return FIRST
        log.info("source %s: no cursor yet; starting after entry %s (%s)", self.name, start, key)
        return start

    def _hand_in(self, entries: Sequence[tuple[bytes, dict[bytes, bytes]]]) -> str:
        """Offer every entry to ingest without waiting; return the last entry's id."""
        ingest, codec, meta, source = self._ingest, self._codec, self._meta, self.name
        now = time.time()
        results: list[asyncio.Future[Outcome]] = []
        entry_id = ""
        for raw_id, raw_fields in entries:
            entry_id = raw_id.decode()
            fields = {
                k.decode(errors="replace"): v.decode(errors="replace")
                for k, v in raw_fields.items()
            }
            # Room was checked for the batch: at most batch_size entries over queue_bound.
            results.append(ingest.offer(source, entry_payload(entry_id, fields), codec, meta, now))
        self._batches.append(_Batch(entry_id, results))
        self.stats.read += len(results)
        self.stats.last_read_at = now
        return entry_id

    async def _settle_oldest(self) -> None:
        """Wait for the oldest batch's commit, then save the cursor after it."""
        batch = self._batches[0]
        await asyncio.gather(*batch.results)  # StoreError: the store failed; read it again
        self._batches.popleft()
        await self._cursors.save_source_cursor(self.name, batch.last_id)
        self._committed = self.stats.cursor = batch.last_id
        self.stats.committed += len(batch.results)

    async def _settle_all(self) -> None:
        """Settle every batch in flight in order; after a failed one, forget the rest (they
        are read again from the cursor) but still wait for their outcome."""
        while self._batches:
            try:
                await self._settle_oldest()
            except StoreError:
                rest = [f for b in self._batches for f in b.results]
                self._batches.clear()
                await asyncio.gather(*rest, return_exceptions=True)
                return
