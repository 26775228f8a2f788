"""Deadlines and a cap on the HTTP server's connections, so slow clients cannot starve others.

Hand-written because uvicorn has no deadline for a request's head or body (its keep-alive
timeout starts only after a first response, and `limit_concurrency` acts only once a head is
complete, so 1,000 half-sent heads still use up every file descriptor). This is a small
subclass of uvicorn's httptools protocol, the one WebServer pins with `http=`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from fieldbridge.observe import Metrics

log = logging.getLogger("fieldbridge.web")

MAX_HEAD_BYTES = 65_536  # request line plus headers; larger is refused with 431
CLOSED_KEY = "fieldbridge.closed"  # scope key: why the server closed the request's connection


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """http.header_timeout_s, http.body_timeout_s (0: no deadline), http.max_connections."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 512
    max_head_bytes: int = MAX_HEAD_BYTES


class ConnectionGuard:
    """The open connections of one server, and which of them wait for a request head."""

    def __init__(self, limits: ConnectionLimits, metrics: Metrics | None = None) -> None:
        self.limits = limits
        self._metrics = metrics
        self._open: set[GuardedProtocol] = set()
        # Insertion order: the connection that has waited longest for a request comes first.
        self._waiting: dict[GuardedProtocol, None] = {}

    @property
    def open(self) -> int:
        return len(self._open)

    def protocol_class(self) -> type[GuardedProtocol]:
        """The protocol class uvicorn instantiates per connection, bound to this guard."""
        guard = self

        class Bound(GuardedProtocol):
            _guard = guard

        return Bound

    def admit(self, conn: GuardedProtocol) -> bool:
        """Room for `conn`: made by closing the longest-waiting idle or slow connection."""
        if len(self._open) >= self.limits.max_connections:
            if not self._waiting:
                self.closed("refused")
                return False
            oldest = next(iter(self._waiting))
            oldest.drop("evicted")
        self._open.add(conn)
        self._waiting[conn] = None
        self._gauge()
        return True

    def waits(self, conn: GuardedProtocol, waiting: bool) -> None:
        if not waiting:
            self._waiting.pop(conn, None)
        elif conn in self._open:
            self._waiting.pop(conn, None)
            self._waiting[conn] = None  # to the end: it has waited least

    def forget(self, conn: GuardedProtocol) -> None:
        self._open.discard(conn)
        self._waiting.pop(conn, None)
        self._gauge()

    def closed(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.http_closed.labels(reason).inc()

    def _gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.http_connections.set(len(self._open))


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head deadline, a body deadline and a head size limit;
    admission goes through the guard the class is bound to (ConnectionGuard.protocol_class)."""

    _guard: ConnectionGuard

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._in_head = True  # waiting for (or reading) a request head
        self._admitted = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self._guard.admit(self):
            _answer(transport, 503, "too many connections (http.max_connections); retry later")
            return
        self._admitted = True
        self._arm(self._guard.limits.header_timeout_s, self._head_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._admitted:
            self._guard.forget(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        limit = self._guard.limits.max_head_bytes
        if self._in_head and self._head_bytes > limit and not self.transport.is_closing():
            self.drop("head_too_large", 431, f"request head over {limit} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        if self._deadline is None:  # the next request on a kept-alive connection
            self._arm(self._guard.limits.header_timeout_s, self._head_late)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._guard.waits(self, False)
        self._disarm()
        super().on_headers_complete()
        self._arm(self._guard.limits.body_timeout_s, self._body_late)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self._in_head = True
            self._guard.waits(self, True)  # idle on keep-alive: first to go when full

    def drop(self, reason: str, status: int | None = None, message: str = "") -> None:
        """Close this connection, answering `status` first when it is not answering already."""
        if self.transport.is_closing():
            return
        self._disarm()
        self._guard.closed(reason)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The app still runs: it sees a disconnect and sends nothing more.
            cast(dict[str, Any], cycle.scope)[CLOSED_KEY] = message or reason
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:
                status = None
        if status is not None:
            _answer(self.transport, status, message)
        else:
            self.transport.close()
        log.debug("closed connection from %s: %s", _host(self.client), message or reason)

    def _head_late(self) -> None:
        self._deadline = None
        seconds = self._guard.limits.header_timeout_s
        if self._head_bytes:
            message = f"request head not complete within {seconds:g} s (http.header_timeout_s)"
            self.drop("header_timeout", 408, message)
        else:  # nothing asked, nothing to answer
            self.drop("header_timeout")

    def _body_late(self) -> None:
        self._deadline = None
        seconds = self._guard.limits.body_timeout_s
        self.drop(
            "body_timeout", 408, f"body not complete within {seconds:g} s (http.body_timeout_s)"
        )

    def _arm(self, seconds: float, late: Callable[[], None]) -> None:
        self._disarm()
        if seconds > 0 and not self.transport.is_closing():
            self._deadline = self.loop.call_later(seconds, late)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


def _answer(transport: asyncio.Transport, status: int, message: str) -> None:
    """A complete plain-text response that closes the connection."""
    phrase = {408: "Request Timeout", 431: "Request Header Fields Too Large"}.get(
        status, "Service Unavailable"
    )
    body = message.encode()
    retry = b"retry-after: 1\r\n" if status == 503 else b""
    transport.write(
        b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: %d\r\nconnection: close\r\n%s\r\n%s"
        % (status, phrase.encode(), len(body), retry, body)
    )
    transport.close()


def _host(client: tuple[str, int] | None) -> str:
    return client[0] if client else "unknown"
