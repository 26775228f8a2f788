"""The sink loop: read after the cursor, send, move the cursor once the destination said yes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from fieldbridge.errors import (
    DeliveryError,
    PartialDeliveryError,
    PermanentDeliveryError,
    RetryableDeliveryError,
    StoreError,
)
from fieldbridge.model import DeadLetterState, JournalEntry, SinkRunState
from fieldbridge.observe import Metrics
from fieldbridge.plugin import SinkSettings
from fieldbridge.sinks.base import NOT_ROUTED, Destination, route_skip
from fieldbridge.sinks.batches import with_readings
from fieldbridge.sinks.http_errors import DESTINATION_REFUSALS
from fieldbridge.store import Store

log = logging.getLogger("fieldbridge.sinks")

CONTROL_POLL = 2.0  # seconds between looks for pause or replay during a long back-off
# How many messages in a row the destination must refuse in the same way (404, 410, ...), with
# nothing accepted after them, before the sink calls it failing and backs off. The first look
# is short; each failing attempt looks twice as far, so a run of messages the destination
# really refuses one by one is passed in a few attempts, while one that is down costs a few
# dozen requests per attempt, not two per message.
FIRST_PROBES = 4
MAX_PROBES = 64


async def _discard(task: asyncio.Task[list[JournalEntry]]) -> None:
    """Cancel a read ahead that is no longer wanted, and swallow its outcome."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


class _Stop(Exception):
    """The runner was asked to stop while waiting."""


class _Interrupted(Exception):
    """A pause or replay was requested while retrying; the batch is abandoned, cursor kept."""


class _Refusing(Exception):
    """The destination refused every message it was offered since the last it accepted."""

    def __init__(self, error: PermanentDeliveryError, delivered_to: int) -> None:
        super().__init__(str(error))
        self.error = error
        self.delivered_to = delivered_to  # messages up to here were accepted or dead-lettered


class SinkRunner:
    """Drives one destination after its cursor; one task per configured sink."""

    def __init__(
        self,
        type_name: str,
        settings: SinkSettings,
        destination: Destination,
        store: Store,
        metrics: Metrics | None = None,
        *,
        backoff_base: float = 0.5,
        idle_poll: float = 1.0,
        lag_every: float = 5.0,
    ) -> None:
        """`backoff_base`: seconds, the first retry waits up to twice this; `idle_poll`: seconds
        between looks at the journal when nothing woke the sink; `lag_every`: seconds between
        lag measurements."""
        self.type_name = type_name
        self.settings = settings
        self.name = settings.name
        self.state = SinkRunState.STARTING if settings.enabled else SinkRunState.DISABLED
        self.last_error: str | None = None
        self._destination = destination
        self._store = store
        destination.bind(store)
        self._metrics = metrics
        self._backoff_base = backoff_base
        self._idle_poll = idle_poll
        self._lag_every = lag_every
        self._wake = asyncio.Event()
        self._stopping = False
        self._cursor = 0
        self._ahead: tuple[int, asyncio.Task[list[JournalEntry]]] | None = None
        # The save of the cursor after a delivered batch, still running while the next batch
        # goes out; awaited before the next save or any other write of the sink's state.
        self._saving: asyncio.Task[None] | None = None
        self._last_send = 0.0
        self._last_lag = 0.0
        self._dead_letters = 0  # how many this sink has, as far as this runner knows
        self._refusals = 0  # failing attempts in a row (the destination refused everything)
        self._probes = FIRST_PROBES
        self._skips_counted = 0  # messages up to this id had their skips counted
        self._caught_up = True  # the last read found less than a batch: a cycle ended

    def health(self) -> Mapping[str, Any] | None:
        """What the destination adds to /healthz (e.g. its OAuth token), or None."""
        return self._destination.health()

    def wake(self) -> None:
        """New messages were committed."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Deliver until stopped; never raises for destination or store trouble."""
        try:
            while not self._stopping:
                try:
                    async with self._destination:
                        await self._run_open()
                except _Stop:
                    break
                except Exception as exc:  # a bug must not end delivery for good: start over
                    log.exception("sink %s: unexpected error; restarting the sink", self.name)
                    with contextlib.suppress(StoreError):
                        await self._set_state(SinkRunState.ERROR, f"{type(exc).__name__}: {exc}")
                    with contextlib.suppress(_Stop):
                        await self._pause_for(5.0)
        finally:  # also when cancelled: the last cursor is saved before the store closes
            if self._ahead is not None:
                await _discard(self._ahead[1])
                self._ahead = None
            with contextlib.suppress(StoreError):
                await self._saved()
            self.state = SinkRunState.STOPPED

    async def _run_open(self) -> None:
        """Deliver with the destination open, riding out store failures and control requests."""
        while not self._stopping:
            try:
                await self._loop()
            except _Interrupted:
                continue
            except StoreError as exc:
                await self._set_state(SinkRunState.STORE_ERROR, str(exc), save=False)
                log.warning("sink %s: store unavailable, retrying: %s", self.name, exc)
                await self._pause_for(2.0)

    async def _loop(self) -> None:
        self._cursor = (await self._store.sink_state(self.name)).cursor
        self._dead_letters = await self._store.count_dead_letters(self.name)
        await self._measure_lag(force=True)  # the lag gauges have a value from the start
        while not self._stopping:
            stored = await self._store.sink_state(self.name)
            await self._saved()  # a replay or pause moves or holds what it saved
            if stored.replay_from is not None:  # read first: taking it is a write
                replay = await self._store.take_replay(self.name)
                if replay is not None:
                    log.info("sink %s: replaying from message %d", self.name, replay + 1)
                    self._cursor = replay
                    self._skips_counted = min(self._skips_counted, replay)
            if stored.paused:
                await self._set_state(SinkRunState.PAUSED, None)
                await self._idle()
                continue
            gate = await self._destination.gate()
            if gate is not None and not gate.open:
                await self._set_state(SinkRunState.PAUSED, gate.why)
                await self._pause_for(self._idle_poll)  # commits do not open it: look again later
                continue
            # A destination's own interval counts between cycles, as the MQTT-Handler slept
            # after sending everything waiting: a cycle sends full batches back to back, so a
            # backlog does not wait the interval once per batch.
            own = None if gate is None else gate.interval
            cycles = own is not None
            interval = self.settings.interval if own is None else own
            await self._retry_dead_letters()
            if interval and self._last_send and (not cycles or self._caught_up):
                # Wait before reading, so what arrives meanwhile goes in this send.
                await self._pause_for(self._last_send + interval - time.monotonic())
            entries = await self._read()
            self._caught_up = len(entries) < self.settings.batch_size
            if not entries:
                await self._set_state(SinkRunState.IDLE, None)
                await self._measure_lag(force=False)
                await self._idle()
                continue
            # Health says what the sink is doing while it sends; a failing sink stays failing
            # until the destination takes something.
            if self.state not in (SinkRunState.RUNNING, SinkRunState.FAILING):
                await self._set_state(SinkRunState.RUNNING, None)
            if not interval or (cycles and not self._caught_up):
                self._read_ahead(entries[-1].id)
            try:
                await self._deliver(entries)
            except _Refusing as refusing:
                await self._refused(refusing)
                continue
            if self.state in (SinkRunState.BACKOFF, SinkRunState.FAILING):
                log.info("sink %s: the destination accepts messages again", self.name)
            self._refusals, self._probes = 0, FIRST_PROBES
            self._cursor = entries[-1].id
            # Saved while the next batch goes out: the destination is not left waiting for a
            # commit between batches.
            await self._set_state(SinkRunState.RUNNING, None, cursor=self._cursor, wait=False)
            await self._measure_lag(force=False)

    async def _read(self) -> list[JournalEntry]:
        """The batch after the cursor: the one read while the last was sent, if it starts
        there (a replay or a refusal moved the cursor elsewhere: read again)."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            start, task = ahead
            if start == self._cursor:
                return await task
            await _discard(task)
        return await self._read_after(self._cursor)

    async def _read_after(self, cursor: int) -> list[JournalEntry]:
        entries = await self._store.read_journal(
            cursor,
            self.settings.batch_size,
            with_payload=self._destination.wants_payload,
            readings=not self._destination.fetches_readings,
        )
        return await self._readable(entries)

    async def _readable(self, entries: Sequence[JournalEntry]) -> list[JournalEntry]:
        """Batch messages get their readings unless the destination sends batches whole."""
        if self._destination.sends_batches:
            return list(entries)
        return await with_readings(entries, self._store)

    def _read_ahead(self, cursor: int) -> None:
        """Read the next batch while this one is sent: the store and the destination work at
        the same time. At most one batch ahead, so memory stays bounded by two batches."""
        self._ahead = (
            cursor,
            asyncio.create_task(self._read_and_prepare(cursor), name=f"sink-{self.name}-ahead"),
        )

    async def _read_and_prepare(self, cursor: int) -> list[JournalEntry]:
        """The batch after `cursor`, and the destination's work ahead on it (its failure only
        costs that work: `send` then does it)."""
        entries = await self._read_after(cursor)
        if entries:
            try:
                await self._destination.prepare(entries)
            except Exception:
                log.debug("sink %s: preparing the next batch failed", self.name, exc_info=True)
        return entries

    async def _choose(self, entries: Sequence[JournalEntry]) -> list[JournalEntry]:
        """The messages to send; those the route's flag or the destination skip are counted
        by reason (in the store and the metrics) and stay in the journal."""
        route = self.settings.route
        destination = self._destination
        taken = [e for e in entries if destination.takes(e)]
        flags = {}
        if route.flag and taken:
            flags = await self._store.device_flags({e.device for e in taken})
        chosen: list[JournalEntry] = []
        skipped: Counter[str] = Counter()
        for entry in taken:
            reason = route_skip(route, entry, flags) or destination.skip_reason(entry)
            if reason is None:
                chosen.append(entry)
            elif reason != NOT_ROUTED and entry.id > self._skips_counted:
                skipped[reason] += 1  # once, though a retried batch is read again
        self._skips_counted = max(self._skips_counted, entries[-1].id)
        if skipped:
            await self._store.add_skips(self.name, skipped, entries[-1].id)
            if self._metrics is not None:
                for reason, n in skipped.items():
                    self._metrics.sink_skipped.labels(self.name, reason).inc(n)
        return chosen

    async def _deliver(self, entries: Sequence[JournalEntry]) -> None:
        chosen = await self._choose(entries)
        if not chosen:
            return
        # Bisect on permanent rejection: one bad message is isolated, the rest go through in order.
        # A refusal that may be the destination's rather than the message's (404, 410, ...) is
        # held, not dead-lettered, until the destination takes a later message: one that
        # refuses every message it is offered is down, not fussy (raises _Refusing).
        step = self._destination.max_batch
        chunks: list[Sequence[JournalEntry]] = (
            [chosen]
            if step is None
            else [chosen[i : i + step] for i in range(0, len(chosen), step)]
        )
        held: list[tuple[JournalEntry, PermanentDeliveryError]] = []
        while chunks:
            chunk = chunks.pop(0)
            if held and len(chunk) > 1:
                # After a held refusal, one message at a time: each is a probe of whether the
                # destination takes anything at all.
                chunks[0:0] = [chunk[:1], chunk[1:]]
                continue
            try:
                await self._send_with_retry(chunk)
            except PartialDeliveryError as exc:  # kept in part: only the refused are dead
                kept = await self._partly_refused(chunk, exc)
                if kept and exc.confirm:
                    # Sent again to confirm: a destination may under-count what it refused
                    # (InfluxDB names one type conflict of several), and a point written
                    # twice overwrites itself. Each round drops at least one message.
                    chunks.insert(0, kept)
                elif kept:
                    await self._delivered(kept)
                    if self._metrics is not None:
                        self._metrics.sink_sent.labels(self.name).inc(len(kept))
                await self._settle(held)
                continue
            except PermanentDeliveryError as exc:
                if len(chunk) > 1:
                    middle = len(chunk) // 2
                    chunks[0:0] = [chunk[:middle], chunk[middle:]]
                    continue
                if exc.status in DESTINATION_REFUSALS and (
                    not held or exc.status == held[0][1].status
                ):
                    held.append((chunk[0], exc))
                    if len(held) >= self._probes:
                        raise _Refusing(exc, held[0][0].id - 1) from exc
                    continue
                # A refusal of this message in particular: the destination judges messages.
                await self._settle(held)
                await self._dead_letter(chunk[0], exc)
                continue
            await self._delivered(chunk)
            await self._settle(held)
            if step is not None and chunk[-1].id > self._cursor:
                # Taken, and everything before it settled: a restart starts after it.
                self._cursor = chunk[-1].id
                await self._set_state(SinkRunState.RUNNING, None, cursor=self._cursor)
        if held:
            raise _Refusing(held[-1][1], held[0][0].id - 1)
        self._last_send = time.monotonic()

    async def _delivered(self, chunk: Sequence[JournalEntry]) -> None:
        if self._dead_letters:  # a replay delivered what was refused before
            forgotten = await self._store.drop_dead_letters(
                sink=self.name, message_ids=[e.id for e in chunk]
            )
            self._dead_letters = max(0, self._dead_letters - forgotten)

    async def _partly_refused(
        self, chunk: Sequence[JournalEntry], exc: PartialDeliveryError
    ) -> list[JournalEntry]:
        """Dead-letter the messages the destination named as refused; the others, to confirm."""
        for entry in chunk:
            if entry.id in exc.rejected:
                reason = exc.rejected[entry.id]
                await self._dead_letter(
                    entry, PermanentDeliveryError(reason, status=exc.status, body=reason)
                )
        return [e for e in chunk if e.id not in exc.rejected]

    async def _settle(self, held: list[tuple[JournalEntry, PermanentDeliveryError]]) -> None:
        """The destination judges messages again: offer each held one once more, alone, and
        dead-letter what it still refuses. A refusal from before it came back (an outage that
        ended mid-probe) is not taken as the message's; the price is that such a message
        arrives after the probe that found the destination up."""
        for entry, _ in held:
            try:
                await self._send_with_retry([entry])
            except PermanentDeliveryError as exc:
                await self._dead_letter(entry, exc)
            else:
                await self._delivered([entry])
        held.clear()

    async def _refused(self, refusing: _Refusing) -> None:
        """Keep the refused messages: move the cursor only over what was settled, back off."""
        cursor = None
        if refusing.delivered_to > self._cursor:
            cursor = self._cursor = refusing.delivered_to
        self._refusals += 1
        self._probes = min(MAX_PROBES, self._probes * 2)
        await self._backoff(self._refusals, refusing.error, cursor=cursor)

    async def _send_with_retry(self, chunk: Sequence[JournalEntry]) -> None:
        attempt = 0
        while True:
            if self._stopping:
                raise _Stop
            try:
                await self._destination.send(chunk)
            except RetryableDeliveryError as exc:
                attempt += 1
                if self._metrics is not None:
                    self._metrics.sink_failed.labels(self.name).inc()
                await self._backoff(attempt, exc)
                continue
            except PermanentDeliveryError:
                if self._metrics is not None:
                    self._metrics.sink_failed.labels(self.name).inc()
                raise
            except Exception as exc:  # a rendering bug: isolate the message, keep the sink going
                log.exception("sink %s: failed to render or send a batch", self.name)
                if self._metrics is not None:
                    self._metrics.sink_failed.labels(self.name).inc()
                raise PermanentDeliveryError(
                    f"{type(exc).__name__}: {exc}", body=f"{type(exc).__name__}: {exc}"
                ) from exc
            if self._metrics is not None:
                self._metrics.sink_sent.labels(self.name).inc(len(chunk))
            return

    async def _backoff(
        self, attempt: int, exc: DeliveryError, *, cursor: int | None = None
    ) -> None:
        """Wait before attempt `attempt + 1`, as `failing` when the destination refuses
        everything (wrong address or credentials), else as `backoff` (an outage)."""
        cap = self.settings.max_backoff
        if exc.retry_after is not None:
            delay = min(max(exc.retry_after, 0.0), max(cap, 3600.0))
        else:
            # Full jitter; the exponent is bounded because 2**1024 overflows a float, and an
            # outage of a couple of days at the default cap reaches that many attempts.
            delay = random.uniform(0, min(cap, self._backoff_base * 2 ** min(attempt, 62)))
        failing = exc.status in DESTINATION_REFUSALS
        state = SinkRunState.FAILING if failing else SinkRunState.BACKOFF
        if state != self.state:  # once per change, not per message or attempt
            log.warning(
                "sink %s: %s%s; retrying with back-off (attempt %d, next in %.1fs)",
                self.name,
                exc,
                "; the destination refuses what it is offered, so messages are kept"
                if failing
                else "",
                attempt,
                delay,
            )
        await self._set_state(state, str(exc), cursor=cursor)
        await self._measure_lag(force=False)
        deadline = time.monotonic() + delay
        while (left := deadline - time.monotonic()) > 0:
            await self._pause_for(min(left, CONTROL_POLL))
            stored = await self._store.sink_state(self.name)
            if stored.paused or stored.replay_from is not None:
                raise _Interrupted

    async def _dead_letter(self, entry: JournalEntry, exc: DeliveryError) -> None:
        log.warning(
            "sink %s: message %d refused for good (%s); moved to dead letters",
            self.name,
            entry.id,
            exc,
        )
        await self._store.add_dead_letter(self.name, entry.id, exc.status, exc.body or str(exc))
        self._dead_letters += 1
        if self._metrics is not None:
            self._metrics.sink_dead.labels(self.name).inc()

    async def _retry_dead_letters(self) -> None:
        letters = await self._store.list_dead_letters(
            sink=self.name, state=DeadLetterState.RETRY, limit=self.settings.batch_size
        )
        if not letters:
            return
        found = await self._store.journal_by_ids(
            [d.message_id for d in letters], with_payload=self._destination.wants_payload
        )
        entries = {e.id: e for e in await self._readable(found)}
        for letter in letters:
            entry = entries.get(letter.message_id)
            if entry is None:
                await self._store.add_dead_letter(
                    self.name, letter.message_id, None, "message is no longer in the journal"
                )
                continue
            try:
                await self._destination.send([entry])
            except RetryableDeliveryError as exc:
                if self._metrics is not None:
                    self._metrics.sink_failed.labels(self.name).inc()
                await self._backoff(1, exc)
                return
            except DeliveryError as exc:
                await self._dead_letter(entry, exc)
                continue
            await self._store.resolve_dead_letter(letter.id)
            if self._metrics is not None:
                self._metrics.sink_sent.labels(self.name).inc()
            log.info("sink %s: dead letter for message %d delivered", self.name, entry.id)
        self._dead_letters = await self._store.count_dead_letters(self.name)

    async def _set_state(
        self,
        state: SinkRunState,
        error: str | None,
        *,
        cursor: int | None = None,
        save: bool = True,
        wait: bool = True,
    ) -> None:
        """Record the state (and the confirmed cursor) in the store: before returning, or
        with `wait=False` in the background, awaited by the next save."""
        if save:
            await self._saved()
        changed = state != self.state or error != self.last_error
        self.state = state
        if error is not None or state in (SinkRunState.IDLE, SinkRunState.RUNNING):
            self.last_error = error
        if save and (changed or cursor is not None):
            saving = self._store.save_progress(
                self.name, cursor=cursor, state=state, last_error=self.last_error
            )
            if wait:
                await saving
            else:
                self._saving = asyncio.create_task(saving, name=f"sink-{self.name}-save")

    async def _saved(self) -> None:
        """Wait for the save still running in the background; its failure is raised here."""
        saving, self._saving = self._saving, None
        if saving is not None:
            await saving

    async def _measure_lag(self, *, force: bool) -> None:
        now = time.monotonic()
        if self._metrics is None or (not force and now - self._last_lag < self._lag_every):
            return
        self._last_lag = now
        count, oldest = await self._store.lag(self._cursor)
        self._metrics.sink_lag_messages.labels(self.name).set(count)
        self._metrics.sink_lag_seconds.labels(self.name).set(
            max(0.0, time.time() - oldest) if oldest is not None else 0.0
        )

    async def _idle(self) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self._idle_poll)
        if self._stopping:
            raise _Stop

    async def _pause_for(self, seconds: float) -> None:
        """Sleep, but wake at once when asked to stop."""
        if seconds <= 0:
            return
        deadline = time.monotonic() + seconds
        while not self._stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), left)
        raise _Stop
