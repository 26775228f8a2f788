"""GET /api/v1/spy: every ingested payload, live, as NDJSON lines for `fieldbridge spy`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from fieldbridge.ingest import Ingest
from fieldbridge.model import Accepted, Incoming, Outcome
from fieldbridge.reading_json import reading_json
from fieldbridge.store import Pending
from fieldbridge.timefmt import iso
from fieldbridge.topics import check_filter, matches
from fieldbridge.web.auth import BearerTokens

log = logging.getLogger("fieldbridge.spy")

QUEUE_BOUND = 1000  # lines a slow watcher may fall behind before the oldest are dropped
HEARTBEAT_S = 15.0  # an idle stream sends {"type": "heartbeat"} this often
MAX_WATCHERS = 32
NDJSON = "application/x-ndjson"


class Watcher:
    """One connected spy: its filters and a bounded queue that drops the oldest lines."""

    def __init__(self, source: str | None, topic: str | None, bound: int = QUEUE_BOUND) -> None:
        self.source = source
        self.topic = topic
        self.lines: deque[bytes] = deque(maxlen=bound)
        self.dropped = 0
        self.closed = False
        self.wake = asyncio.Event()

    def wants(self, source: str, topic: object) -> bool:
        if self.source is not None and source != self.source:
            return False
        if self.topic is None:
            return True
        return isinstance(topic, str) and matches(self.topic, topic)

    def push(self, line: bytes) -> None:
        if len(self.lines) == self.lines.maxlen:
            self.dropped += 1
        self.lines.append(line)
        self.wake.set()

    def close(self) -> None:
        self.closed = True
        self.wake.set()


class SpyHub:
    """Fans committed payloads out to the connected watchers.

    The ingest tap is registered only while someone watches, so an unwatched service does no
    spy work at all.
    """

    def __init__(self, ingest: Ingest) -> None:
        self._ingest = ingest
        self._watchers: list[Watcher] = []
        self._remove_tap: Callable[[], None] | None = None
        self._closed = False

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    def watch(self, source: str | None, topic: str | None) -> Watcher:
        watcher = Watcher(source, topic)
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
        for watcher in self._watchers:
            if watcher.wants(item.source, topic):
                if line is None:
                    line = render(item, pending, outcome)
                watcher.push(line)


def render(item: Incoming, pending: Pending, outcome: Outcome) -> bytes:
    """One NDJSON line: when, where from, what it decoded to, and what became of it."""
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
        event["messages"] = [
            {
                "device": d.device,
                "kind": d.kind,
                "attributes": dict(d.attributes) if d.attributes else None,
                "readings": [reading_json(r) for r in d.readings],
            }
            for d in pending.decoded or ()
        ]
    else:
        event["outcome"] = "rejected"
        event["reason"] = outcome.reason
        event["quarantine_id"] = outcome.quarantine_id
        event["cause"] = outcome.cause
    return orjson.dumps(event, default=str) + b"\n"


class SpyEndpoint:
    """The Starlette endpoint: filters from the query, bearer token when http.tokens are set."""

    def __init__(self, hub: SpyHub, tokens: Sequence[str] = ()) -> None:
        self._hub = hub
        self._auth = BearerTokens(tokens)

    async def handle(self, request: Request) -> Response:
        refusal = self._auth.refusal(request)
        if refusal is not None:
            return refusal
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
        if self._hub.watchers >= MAX_WATCHERS:
            return JSONResponse(
                {"error": f"{MAX_WATCHERS} spies are watching already; close one"},
                status_code=503,
            )
        watcher = self._hub.watch(source, topic)
        hello = {"type": "hello", "source": source, "topic": topic, "queue": QUEUE_BOUND}
        return StreamingResponse(
            _stream(self._hub, watcher, orjson.dumps(hello) + b"\n"),
            media_type=NDJSON,
            headers={"Cache-Control": "no-store"},
        )


async def _stream(hub: SpyHub, watcher: Watcher, hello: bytes) -> AsyncIterator[bytes]:
    try:
        yield hello
        while not watcher.closed:
            if not watcher.lines:
                watcher.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(watcher.wake.wait(), HEARTBEAT_S)
                if not watcher.lines and not watcher.closed:
                    yield b'{"type":"heartbeat"}\n'
                continue
            if watcher.dropped:
                dropped, watcher.dropped = watcher.dropped, 0
                yield orjson.dumps({"type": "dropped", "count": dropped}) + b"\n"
            lines = list(watcher.lines)
            watcher.lines.clear()
            yield b"".join(lines)
    finally:
        hub.leave(watcher)


def _bad(message: str) -> Response:
    return JSONResponse({"error": message}, status_code=400)
