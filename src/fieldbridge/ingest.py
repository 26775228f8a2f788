"""Group commit: batches payloads from every source into one transaction, then acknowledges."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, cast

from fieldbridge.errors import DecodeError, StoreError
from fieldbridge.model import Codec, Decoded, Incoming, Outcome, Refusal
from fieldbridge.observe import Metrics
from fieldbridge.store import Pending, Store
from fieldbridge.store.jsoncol import dump

log = logging.getLogger("fieldbridge.ingest")

Tap = Callable[[Incoming, Pending, Outcome], None]
"""Sees every payload after its commit: what came in, what it decoded to, and the outcome."""


DEFAULT_MAX_IN_FLIGHT_BYTES = 67_108_864  # ingest.max_in_flight_bytes
DEFAULT_IN_FLIGHT_WAIT_S = 5.0  # ingest.in_flight_wait_s
# A batch stops taking payloads once it holds this many bytes: what a payload decodes to
# (readings, rows) is many times its size, and two batches are decoded at once at most.
BATCH_BYTES = 524_288
# Under a backlog (a burst, or sources faster than the store) a batch takes half of what waits,
# up to this many times batch_size: one commit (its fsync, its GIL hand-overs to the writer
# thread, its device updates) then serves more payloads, and two batches stay in the pipe.
# 10 rather than 4: a commit's pages written for each device (the readings index) and its
# statements are shared by more messages; about 0.7 µs less CPU a message in a burst, and
# BATCH_BYTES still bounds what a batch holds.
BURST_BATCHES = 10
# Payloads larger than this wait in a lane of their own, served in turn with the small ones,
# so a run of large bodies (seconds of commits) does not hold up a one-reading message.
LARGE_PAYLOAD = 65_536


class ShuttingDown(StoreError):
    """Ingest no longer accepts payloads; the source should tell its device to retry."""


class Busy(StoreError):
    """The in-flight byte budget stayed full for `in_flight_wait_s`; retry later."""


@dataclass(slots=True)
class Reservation:
    """Bytes counted as in flight for a payload not read yet (an HTTP body)."""

    nbytes: int
    settled: bool = False  # handed to `offer` or released


class Ingest:
    """The one place where payloads become committed messages.

    A source awaits `submit` (or attaches a callback to the future `offer` returns); it
    completes only after the payload's transaction committed (Accepted or Rejected) and
    raises StoreError when the store failed, so the source can tell its device to retry.
    At most `queue_bound` payloads and about `max_in_flight_bytes` of them are in flight;
    beyond that, `submit` waits (back-pressure). A source that reads a large payload first
    (HTTP) reserves its bytes with `reserve`, which waits at most `in_flight_wait_s`.
    """

    def __init__(
        self,
        store: Store,
        *,
        batch_size: int = 500,
        flush_ms: float = 5.0,
        queue_bound: int = 10_000,
        max_in_flight_bytes: int = DEFAULT_MAX_IN_FLIGHT_BYTES,
        in_flight_wait_s: float = DEFAULT_IN_FLIGHT_WAIT_S,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._batch_size = batch_size
        self._flush_s = flush_ms / 1000.0
        self._bound = queue_bound
        self._in_flight = 0  # handed in, not yet answered
        self._room = asyncio.Event()
        self._room.set()
        self._max_bytes = max_in_flight_bytes
        self._wait_s = in_flight_wait_s
        self._bytes = 0  # payload bytes handed in and reserved, not yet answered
        self._freed = asyncio.Event()  # set whenever bytes are answered or released
        self._queue: deque[Incoming] = deque()  # payloads up to LARGE_PAYLOAD, oldest first
        self._large: deque[Incoming] = deque()  # larger payloads, oldest first
        self._large_next = False  # which lane the next batch is taken from, if both wait
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._metrics = metrics
        self._listeners: list[Callable[[], None]] = []
        self._answered: list[Callable[[], None]] = []
        self._taps: list[Tap] = []
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # set on entering
        self._closing = False
        # The latest commit's outcome, for /healthz: a store that reads but cannot write is
        # seen here first. None until the first commit.
        self.last_commit_ok: bool | None = None
        self.last_commit_at: float | None = None  # time.time() when it ended
        self.last_commit_error: str | None = None

    def on_commit(self, listener: Callable[[], None]) -> None:
        """Call `listener` after every commit that added messages (sinks wake on it)."""
        self._listeners.append(listener)

    def on_answered(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call `listener` each time a batch's futures were resolved (committed or failed);
        returns the remover. A source that keeps its futures in order looks at them then,
        rather than attaching a callback to every one."""
        self._answered.append(listener)
        return lambda: self._answered.remove(listener) if listener in self._answered else None

    def add_tap(self, tap: Tap) -> Callable[[], None]:
        """Call `tap` for every payload after its commit (the live spy); returns the remover.

        With no tap registered, committing does no extra work at all.
        """
        self._taps.append(tap)
        return lambda: self._taps.remove(tap) if tap in self._taps else None

    @property
    def taps(self) -> tuple[Tap, ...]:
        """The taps registered now, oldest first (a copy: remove one with its remover)."""
        return tuple(self._taps)

    @property
    def has_room(self) -> bool:
        """Whether a payload can be handed in without exceeding the in-flight bounds."""
        return self._in_flight < self._bound and self._bytes < self._max_bytes

    @property
    def in_flight_bytes(self) -> int:
        return self._bytes

    async def wait_for_room(self) -> None:
        """Return once fewer than `queue_bound` payloads and `max_in_flight_bytes` bytes are in
        flight (back-pressure)."""
        while not self.has_room:
            self._room.clear()
            await self._room.wait()

    async def reserve(self, nbytes: int, source: str) -> Reservation:
        """Count `nbytes` as in flight before reading a payload that large; hand the
        reservation to `submit`, or `release` it.

        Waits up to `in_flight_wait_s` while the budget has no room for it (a payload larger
        than the whole budget passes when nothing else is in flight), then raises Busy.
        """
        if self._closing:
            raise ShuttingDown("fieldbridge is shutting down; retry shortly")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_s
        while self._bytes and self._bytes + nbytes > self._max_bytes:
            left = deadline - loop.time()
            if left <= 0:
                if self._metrics is not None:
                    self._metrics.budget_refused.labels(source).inc()
                raise Busy(
                    f"ingest is full: {self._bytes} bytes in flight, the budget is "
                    f"{self._max_bytes} (ingest.max_in_flight_bytes), and none came free within "
                    f"{self._wait_s:g} s (ingest.in_flight_wait_s); retry later"
                )
            self._freed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._freed.wait(), left)
        self._bytes += nbytes
        self._show_bytes()
        return Reservation(nbytes)

    def release(self, reservation: Reservation) -> None:
        """Give back a reservation that was not handed to `submit` (the body was refused)."""
        if not reservation.settled:
            reservation.settled = True
            self._free_bytes(reservation.nbytes)

    def offer(
        self,
        source: str,
        payload: bytes,
        codec: Codec,
        meta: Mapping[str, Any] | None = None,
        received_at: float | None = None,
        reservation: Reservation | None = None,
    ) -> asyncio.Future[Outcome]:
        """Hand in one payload without waiting; the future resolves after commit.

        For callback-driven sources (acknowledge in a done-callback). The caller keeps to
        the bound by checking `has_room` or awaiting `wait_for_room` first. The bytes of a
        `reservation` become the payload's own.
        """
        if self._closing:
            raise ShuttingDown("fieldbridge is shutting down; retry shortly")
        size = len(payload)
        self._bytes += size
        if reservation is not None and not reservation.settled:
            reservation.settled = True
            self._bytes -= reservation.nbytes
            if reservation.nbytes > size:  # a body without Content-Length
                self._freed.set()
        # The loop ingest runs on, not get_running_loop(): CPython's asks getpid() each call.
        future: asyncio.Future[Outcome] = (self._loop or asyncio.get_running_loop()).create_future()
        lane = self._large if size > LARGE_PAYLOAD else self._queue
        lane.append(
            Incoming(source, payload, codec, meta or {}, received_at or time.time(), future)
        )
        self._in_flight += 1
        if not self.has_room:
            self._room.clear()
        waiting = self._waiting
        if waiting == 1:
            self._arrived.set()
        # An event already set is not set again (once a message).
        if (waiting >= self._batch_size or lane is self._large) and not self._full.is_set():
            self._full.set()
        return future

    async def submit(
        self,
        source: str,
        payload: bytes,
        codec: Codec,
        meta: Mapping[str, Any] | None = None,
        received_at: float | None = None,
        reservation: Reservation | None = None,
    ) -> Outcome:
        """Hand in one payload; return once it is committed (or raise StoreError).

        With a `reservation` its bytes are counted already: only the payload count can make
        this wait.
        """
        if reservation is None:
            if not self.has_room:
                await self.wait_for_room()
        else:
            while self._in_flight >= self._bound:
                self._room.clear()
                await self._room.wait()
        return await self.offer(source, payload, codec, meta, received_at, reservation)

    async def __aenter__(self) -> Ingest:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="fieldbridge-ingest")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop accepting, commit and acknowledge everything already handed in."""
        self._closing = True
        self._arrived.set()
        self._full.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _run(self) -> None:
        in_flight: asyncio.Task[None] | None = None
        while True:
            if not self._waiting:
                if self._closing:
                    break
                self._arrived.clear()
                await self._arrived.wait()
                continue
            if self._waiting < self._batch_size and not self._closing:
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self._flush_s)
            batch, size = self._take_batch()
            metas: dict[int, str] = {}  # meta JSON by the meta's id(): alive with the batch
            pending = [_decode(item, metas) for item in batch]
            if in_flight is not None:
                await in_flight
            in_flight = asyncio.create_task(self._commit(batch, pending, size))
            del batch, pending  # the commit owns them: what they decoded to goes with it
            # Let the commit start (hand its work to the store) before decoding the next batch,
            # so decoding and committing overlap.
            await asyncio.sleep(0)
        if in_flight is not None:
            await in_flight

    @property
    def _waiting(self) -> int:
        return len(self._queue) + len(self._large)

    def _take_batch(self) -> tuple[list[Incoming], int]:
        """The oldest payloads of one lane, up to batch_size of them (more under a backlog,
        see BURST_BATCHES) and about BATCH_BYTES (at least one), and their bytes; when both
        lanes wait, they take turns."""
        small, large = self._queue, self._large
        first, other = (large, small) if self._large_next else (small, large)
        lane = first if first else other
        self._large_next = lane is self._queue
        limit = max(self._batch_size, min(len(lane) // 2, self._batch_size * BURST_BATCHES))
        batch = [lane.popleft()]
        size = len(batch[0].payload)
        for _ in range(min(limit - 1, len(lane))):
            if size >= BATCH_BYTES:
                break
            item = lane.popleft()
            batch.append(item)
            size += len(item.payload)
        return batch, size

    async def _commit(
        self, batch: Sequence[Incoming], pending: Sequence[Pending], size: int
    ) -> None:
        """Commit and answer `batch` (`size`: its payloads' bytes)."""
        try:
            await self._commit_and_answer(batch, pending)
        finally:
            self._in_flight -= len(batch)
            self._free_bytes(size)
            for listener in self._answered:
                try:
                    listener()
                except Exception:  # a source's bug must not stop ingest
                    log.exception("ingest answer listener failed")

    def _free_bytes(self, nbytes: int) -> None:
        self._bytes -= nbytes
        self._freed.set()
        if self.has_room:
            self._room.set()
        self._show_bytes()

    def _show_bytes(self) -> None:
        if self._metrics is not None:
            self._metrics.in_flight_bytes.set(self._bytes)

    async def _commit_and_answer(
        self, batch: Sequence[Incoming], pending: Sequence[Pending]
    ) -> None:
        started = time.perf_counter()
        try:
            outcomes = await self._store.commit(pending)
        except StoreError as exc:
            self._commit_ended(str(exc))
            log.warning(
                "store failed; %d payloads will be retried by their devices: %s", len(batch), exc
            )
            if self._metrics is not None:
                self._metrics.count_ingest(batch, "store_error")
            for item in batch:
                if not item.result.done():
                    item.result.set_exception(StoreError(str(exc)))
            return
        except Exception as exc:  # a bug, not a store failure: still answer every source
            self._commit_ended(f"internal error: {exc}")
            log.exception("commit failed")
            for item in batch:
                if not item.result.done():
                    item.result.set_exception(StoreError(f"internal error: {exc}"))
            return
        self._commit_ended(None)
        if self._metrics is not None:
            self._metrics.observe_commit(batch, outcomes, time.perf_counter() - started)
        for item, outcome in zip(batch, outcomes, strict=True):
            if not item.result.done():
                item.result.set_result(outcome)
        for listener in self._listeners:
            listener()
        if self._taps:
            self._tell_taps(batch, pending, outcomes)

    def _commit_ended(self, error: str | None) -> None:
        self.last_commit_ok = error is None
        self.last_commit_at = time.time()
        self.last_commit_error = error

    def _tell_taps(
        self, batch: Sequence[Incoming], pending: Sequence[Pending], outcomes: Sequence[Outcome]
    ) -> None:
        for tap in list(self._taps):
            try:
                for seen in zip(batch, pending, outcomes, strict=True):
                    tap(*seen)
            except Exception:  # a watcher's bug must never touch ingest
                log.exception("ingest tap failed; removed")
                if tap in self._taps:
                    self._taps.remove(tap)


def _decode(item: Incoming, metas: dict[int, str]) -> Pending:
    """`metas`: the JSON of meta mappings seen in this batch, by id(); a source that hands in
    the same mapping for many payloads (the MQTT source, one per topic) has it written once."""
    meta = item.meta
    if not meta:
        meta_json = "{}"
    elif (written := metas.get(id(meta))) is not None:
        meta_json = written
    else:
        meta_json = metas[id(meta)] = dump(meta)
    try:
        decoded = item.codec(item.payload, item.meta, item.received_at)
    except DecodeError as exc:
        return Pending(
            item.source,
            item.received_at,
            meta_json,
            item.payload,
            reason=exc.reason,
            malformed=exc.malformed,
            cause=exc.cause,
        )
    except Exception as exc:  # a codec bug must not lose the payload: quarantine it
        log.exception("codec crashed on a payload from %s; quarantined", item.source)
        reason = f"codec error: {type(exc).__name__}: {exc}"
        return Pending(item.source, item.received_at, meta_json, item.payload, reason=reason)
    for part in decoded:
        if type(part) is not Decoded:
            return _split(item, meta_json, decoded)
    if not decoded:
        return Pending(
            item.source,
            item.received_at,
            meta_json,
            item.payload,
            reason="payload holds no message",
        )
    # The type as a string: list[Decoded] would be built on every call. Pending positionally:
    # keyword arguments cost about 0.1 µs more.
    messages = cast("list[Decoded]", decoded if type(decoded) is list else list(decoded))
    return Pending(item.source, item.received_at, meta_json, item.payload, messages)


def _split(item: Incoming, meta_json: str, parts: Sequence[Decoded | Refusal]) -> Pending:
    """A payload the codec took in part: its messages and its refused parts."""
    messages = [part for part in parts if isinstance(part, Decoded)]
    refused = [part for part in parts if isinstance(part, Refusal)]
    if len(messages) + len(refused) != len(parts):  # a codec bug: keep the payload
        reason = "codec error: returned something other than Decoded or Refusal"
        return Pending(item.source, item.received_at, meta_json, item.payload, reason=reason)
    if not messages:
        reason = "; ".join(r.reason for r in refused[:3])
        if len(refused) > 3:
            reason += f"; and {len(refused) - 3} more"
        return Pending(
            item.source,
            item.received_at,
            meta_json,
            item.payload,
            reason=reason,
            cause=refused[0].cause,
        )
    return Pending(
        item.source, item.received_at, meta_json, item.payload, decoded=messages, refused=refused
    )
