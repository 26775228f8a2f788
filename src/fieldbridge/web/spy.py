"""GET /api/v1/spy: every ingested payload, live, as NDJSON lines for `fieldbridge spy` (or as
Server-Sent Events for the console's live view)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from fieldbridge.ingest import Ingest
from fieldbridge.model import Accepted, Decoded, Incoming, Outcome
from fieldbridge.observe import Metrics
from fieldbridge.reading_json import reading_json
from fieldbridge.store import Pending
from fieldbridge.timefmt import iso
from fieldbridge.topics import check_filter, matches

log = logging.getLogger("fieldbridge.spy")

DEFAULT_QUEUE_BYTES = 4_194_304  # spy.queue_bytes
DEFAULT_MAX_WATCHERS = 8  # spy.max_watchers
CHUNK_BYTES = 65_536  # a stream hands the server about this much at a time (see Watcher.take)
SHOWN_READINGS = 12  # readings per message kept in a line cut to fit spy.queue_bytes
MIN_READING_BYTES = 80  # one reading in a line takes at least this much (keys, ISO time)
HEARTBEAT_S = 15.0  # an idle stream sends {"type": "heartbeat"} this often
NDJSON = "application/x-ndjson"


class Watcher:
    """One connected spy: its filters and a queue bounded in bytes that drops the oldest lines."""

    def __init__(
        self,
        source: str | None,
        topic: str | None,
        max_bytes: int = DEFAULT_QUEUE_BYTES,
        device: str | None = None,
    ) -> None:
        self.source = source
        self.topic = topic
        self.device = device
        self.max_bytes = max_bytes
        self.lines: deque[bytes] = deque()
        self.queued_bytes = 0
        self.dropped = 0  # lines lost since the stream last said so
        self.closed = False
        self.wake = asyncio.Event()

    def wants(self, source: str, topic: object) -> bool:
        if self.source is not None and source != self.source:
            return False
        if self.topic is None:
            return True
        return isinstance(topic, str) and matches(self.topic, topic)

    def wants_devices(self, devices: Callable[[], set[str]]) -> bool:
        """With a device filter, whether the payload decoded to a message of that device."""
        return self.device is None or self.device in devices()

    def push(self, line: bytes) -> int:
        """Queue `line`, dropping the oldest lines over `max_bytes`; return how many dropped."""
        self.lines.append(line)
        self.queued_bytes += len(line)
        dropped = 0
        while self.queued_bytes > self.max_bytes:
            self.queued_bytes -= len(self.lines.popleft())
            dropped += 1
        self.dropped += dropped
        self.wake.set()
        return dropped

    def take(self) -> bytes:
        """The oldest lines, about CHUNK_BYTES of them (at least one).

        Small chunks keep what a watcher that stopped reading holds outside this queue (in the
        server's write buffer, while the stream waits for the socket to drain) to one chunk.
        """
        taken = [self.lines.popleft()]
        size = len(taken[0])
        while self.lines and size + len(self.lines[0]) <= CHUNK_BYTES:
            line = self.lines.popleft()
            taken.append(line)
            size += len(line)
        self.queued_bytes -= size
        return b"".join(taken)

    def close(self) -> None:
        self.closed = True
        self.wake.set()


class SpyHub:
    """Fans committed payloads out to the connected watchers, at most `max_watchers` of them.

    The ingest tap is registered only while someone watches, so an unwatched service does no
    spy work at all. Every watcher queues at most `queue_bytes` (lines are shared between
    watchers, not copied); a line larger than that is cut to a summary of its readings.
    """

    def __init__(
        self,
        ingest: Ingest,
        *,
        max_watchers: int = DEFAULT_MAX_WATCHERS,
        queue_bytes: int = DEFAULT_QUEUE_BYTES,
        metrics: Metrics | None = None,
    ) -> None:
        self._ingest = ingest
        self.max_watchers = max_watchers
        self.queue_bytes = queue_bytes
        self._metrics = metrics
        self._watchers: list[Watcher] = []
        self._remove_tap: Callable[[], None] | None = None
        self._closed = False

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    @property
    def full(self) -> bool:
        return len(self._watchers) >= self.max_watchers

    def watch(self, source: str | None, topic: str | None, device: str | None = None) -> Watcher:
        watcher = Watcher(source, topic, self.queue_bytes, device)
        if self._closed:
            watcher.close()
            return watcher
        self._watchers.append(watcher)
        if self._remove_tap is None:
            self._remove_tap = self._ingest.add_tap(self._tap)
        return watcher

    def leave(self, watcher: Watcher) -> None:
        if watcher in self._watchers:
            self._watchers.remove(watcher)
            watcher.lines.clear()
            watcher.queued_bytes = 0
        if not self._watchers and self._remove_tap is not None:
            self._remove_tap()
            self._remove_tap = None

    def close(self) -> None:
        """End every stream (the service is stopping) and refuse new ones."""
        self._closed = True
        for watcher in list(self._watchers):
            watcher.close()
            self.leave(watcher)

    def _tap(self, item: Incoming, pending: Pending, outcome: Outcome) -> None:
        topic = item.meta.get("topic")
        line: bytes | None = None
        found: set[str] | None = None

        def devices() -> set[str]:
            nonlocal found
            if found is None:
                found = {d.device for d in pending.decoded or ()}
            return found

        for watcher in self._watchers:
            if watcher.wants(item.source, topic) and watcher.wants_devices(devices):
                if line is None:
                    line = self._line(item, pending, outcome)
                dropped = watcher.push(line)
                if dropped and self._metrics is not None:
                    self._metrics.spy_dropped.inc(dropped)

    def _line(self, item: Incoming, pending: Pending, outcome: Outcome) -> bytes:
        """The whole line when it fits a queue, else the summary (without building the whole
        line first when the readings alone are sure to be too many)."""
        readings = sum(len(d.readings) for d in pending.decoded or ())
        if readings * MIN_READING_BYTES <= self.queue_bytes:
            line = render(item, pending, outcome)
            if len(line) <= self.queue_bytes:
                return line
        return render(item, pending, outcome, keep=SHOWN_READINGS)


def render(item: Incoming, pending: Pending, outcome: Outcome, *, keep: int | None = None) -> bytes:
    """One NDJSON line: when, where from, what it decoded to, and what became of it.

    With `keep`, at most that many messages and readings per message are shown, and
    `messages_omitted` / `readings_omitted` say how many more there were (a line that would
    not fit a watcher's queue).
    """
    event: dict[str, Any] = {
        "type": "message",
        "time": iso(item.received_at),
        "source": item.source,
        "topic": item.meta.get("topic"),
        "meta": dict(item.meta),
    }
    if isinstance(outcome, Accepted):
        event["outcome"] = "duplicate" if outcome.duplicates == len(outcome.ids) else "accepted"
        event["ids"] = list(outcome.ids)
        event["duplicates"] = outcome.duplicates
        decoded = pending.decoded or []
        shown = decoded if keep is None else decoded[:keep]
        event["messages"] = [_message(d, keep) for d in shown]
        if len(shown) < len(decoded):
            event["messages_omitted"] = len(decoded) - len(shown)
        if outcome.quarantined:
            event["quarantined"] = [
                {"reason": q.reason, "quarantine_id": q.quarantine_id, "cause": q.cause}
                for q in outcome.quarantined
            ]
    else:
        event["outcome"] = "rejected"
        event["reason"] = outcome.reason
        event["quarantine_id"] = outcome.quarantine_id
        event["cause"] = outcome.cause
    return orjson.dumps(event, default=str) + b"\n"


def _message(d: Decoded, keep: int | None) -> dict[str, Any]:
    readings = d.readings if keep is None else d.readings[:keep]
    message: dict[str, Any] = {
        "device": d.device,
        "kind": d.kind,
        "attributes": dict(d.attributes) if d.attributes else None,
        "readings": [reading_json(r) for r in readings],
    }
    if len(readings) < len(d.readings):
        message["readings_omitted"] = len(d.readings) - len(readings)
    return message


class SpyEndpoint:
    """The Starlette endpoint: filters from the query. Who may watch is the security gate's
    business (a login, an API token, or one of http.tokens)."""

    def __init__(self, hub: SpyHub) -> None:
        self._hub = hub

    async def handle(self, request: Request) -> Response:
        params = request.query_params
        unknown = sorted(set(params) - {"source", "topic"})
        if unknown:
            return _bad(f"unknown query parameter {unknown[0]!r} (known: source, topic)")
        source = params.get("source") or None
        topic = params.get("topic") or None
        if topic is not None:
            try:
                check_filter(topic)
            except ValueError as exc:
                return _bad(f"topic: {exc}")
        if self._hub.full:
            limit = self._hub.max_watchers
            return JSONResponse(
                {
                    "error": f"{limit} spies are watching already (spy.max_watchers); close one "
                    "or raise spy.max_watchers"
                },
                status_code=503,
                headers={"Retry-After": "10"},
            )
        watcher = self._hub.watch(source, topic)
        hello = {
            "type": "hello",
            "source": source,
            "topic": topic,
            "queue_bytes": self._hub.queue_bytes,
        }
        return stream_response(self._hub, watcher, hello, NDJSON_FRAMING)


@dataclass(frozen=True)
class Framing:
    """How a stream wraps its NDJSON lines on the wire."""

    media_type: str
    heartbeat: bytes
    wrap: Callable[[bytes], bytes]  # a chunk of whole lines -> what is sent


def _sse_events(chunk: bytes) -> bytes:
    """Each NDJSON line as one Server-Sent Event (JSON holds no raw newline, so one data:)."""
    return b"".join(b"data: " + line + b"\n\n" for line in chunk.splitlines())


NDJSON_FRAMING = Framing(NDJSON, b'{"type":"heartbeat"}\n', lambda chunk: chunk)
# An SSE comment line keeps proxies and the browser's EventSource from timing out.
SSE_FRAMING = Framing("text/event-stream", b": heartbeat\n\n", _sse_events)


def stream_response(
    hub: SpyHub, watcher: Watcher, hello: Mapping[str, Any], framing: Framing
) -> StreamingResponse:
    """The streaming answer for a watcher: `hello` first, then its lines as they come."""
    first = framing.wrap(orjson.dumps(hello) + b"\n")
    return StreamingResponse(
        _stream(hub, watcher, first, framing),
        media_type=framing.media_type,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _stream(
    hub: SpyHub, watcher: Watcher, hello: bytes, framing: Framing = NDJSON_FRAMING
) -> AsyncIterator[bytes]:
    try:
        yield hello
        while not watcher.closed:
            if not watcher.lines:
                watcher.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(watcher.wake.wait(), HEARTBEAT_S)
                if not watcher.lines and not watcher.closed:
                    yield framing.heartbeat
                continue
            if watcher.dropped:
                dropped, watcher.dropped = watcher.dropped, 0
                yield framing.wrap(orjson.dumps({"type": "dropped", "count": dropped}) + b"\n")
            yield framing.wrap(watcher.take())
    finally:
        hub.leave(watcher)


def _bad(message: str) -> Response:
    return JSONResponse({"error": message}, status_code=400)
