"""A real HTTP webhook receiver that checks fieldbridge's contract and can be told to misbehave.

`async with WebhookReceiver() as hook:` serves on 127.0.0.1 (a free port) inside the test's
event loop. It checks what a real receiver of schema fieldbridge.webhook/1 would check, answers
400 and records a violation when a request breaks the contract, and keeps every request and every
accepted message. Misbehaviour is switched at runtime: `fail()`, `throttle()`, `poison()`,
`hang()`, `hold_replies()`; `recover()` undoes all of them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fieldbridge.web.server import WebServer

SCHEMA = "fieldbridge.webhook/1"
PATH = "/hook"
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$")
MESSAGE_FIELDS = ("id", "received_at", "source", "device", "readings")
READING_FIELDS = ("quantity", "value", "unit", "channel", "measured_at")

# What the receiver made of one request.
ACCEPTED = "accepted"  # 2xx, messages taken
DUPLICATE = "duplicate"  # 2xx, but the Idempotency-Key was seen before: nothing new taken
FAILED = "failed"  # fail(): 5xx
THROTTLED = "throttled"  # throttle(): 429 + Retry-After
POISONED = "poisoned"  # poison(): 400, the batch holds a poison message id
HUNG = "hung"  # hang(): slept past the client's timeout
INVALID = "invalid"  # broke the contract: 400, recorded in `violations`


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as the receiver saw it, with the answer it gave."""

    at: float  # time.monotonic() on arrival
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    outcome: str
    ids: tuple[int, ...] = ()  # message ids in the batch (empty when the body was unusable)
    idempotency_key: str | None = None


@dataclass
class _Hang:
    remaining: int
    seconds: float
    then_accept: bool  # after sleeping, take the batch anyway (the reply comes too late)


@dataclass
class _Behaviour:
    fail_status: int | None = None
    recover_on: Callable[[tuple[int, ...]], bool] | None = None  # fail() until a batch matches
    throttle_after: int | None = None  # Retry-After seconds while throttling
    throttle_remaining: int | None = None  # None: until recover()
    poison: set[int] = field(default_factory=set)
    poison_status: int = 400
    hang: _Hang | None = None


class WebhookReceiver:
    """A webhook endpoint on a real socket; `url` is where fieldbridge should POST."""

    def __init__(self) -> None:
        self.requests: list[ReceivedRequest] = []
        self.violations: list[str] = []
        self.received: list[dict[str, Any]] = []  # every accepted message, repeats included
        self.ingested: dict[int, dict[str, Any]] = {}  # first copy of each id, by new keys only
        self.counts: Counter[str] = Counter()
        self._behaviour = _Behaviour()
        self._seen_keys: set[str] = set()
        self._changed = asyncio.Event()
        self._closing = asyncio.Event()
        self._replies_open = asyncio.Event()
        self._replies_open.set()
        self.held = 0  # requests currently waiting in hold_replies()
        # Every method and path reaches the handler, so a wrong one is a recorded violation.
        methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=methods)])
        # fieldbridge's own server runner; a long keep-alive so reused connections never race
        # the server closing them.
        self._web = WebServer(app, "127.0.0.1:0", graceful_s=2, keep_alive_s=30)
        self.port = self._web.port
        self.url = f"http://127.0.0.1:{self.port}{PATH}"

    # --- views -----------------------------------------------------------------------------

    @property
    def received_ids(self) -> list[int]:
        """Ids of every accepted message in arrival order, repeats included."""
        return [m["id"] for m in self.received]

    @property
    def ingested_ids(self) -> list[int]:
        """Ids a receiver that drops repeated Idempotency-Keys kept, in arrival order."""
        return list(self.ingested)

    def requests_with(self, outcome: str) -> list[ReceivedRequest]:
        return [r for r in self.requests if r.outcome == outcome]

    async def wait_for(self, condition: Callable[[], bool], within: float = 10.0) -> None:
        """Return once `condition()` holds after some request; AssertionError after `within` s."""
        deadline = time.monotonic() + within
        while not condition():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"webhook receiver: condition not met within {within}s; "
                    f"counts={dict(self.counts)} received={self.received_ids[-20:]}"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.1))

    async def wait_for_requests(self, n: int, within: float = 10.0) -> None:
        await self.wait_for(lambda: len(self.requests) >= n, within)

    # --- misbehaviour, switchable at runtime ------------------------------------------------

    def fail(
        self, status: int = 500, *, recover_on: Callable[[tuple[int, ...]], bool] | None = None
    ) -> None:
        """Answer every request with `status` (a 5xx, or a 404 as a wrong URL) until recover(),
        or until a batch whose ids `recover_on` approves, which is then taken."""
        self._behaviour.fail_status = status
        self._behaviour.recover_on = recover_on

    def throttle(self, retry_after: int = 1, times: int | None = None) -> None:
        """Answer 429 with Retry-After (seconds), for `times` requests or until recover()."""
        self._behaviour.throttle_after = retry_after
        self._behaviour.throttle_remaining = times

    def poison(self, *message_ids: int, status: int = 400) -> None:
        """Refuse (`status`, 400 unless told) any batch that holds one of these ids; other
        batches are accepted."""
        self._behaviour.poison.update(message_ids)
        self._behaviour.poison_status = status

    def cure(self, *message_ids: int) -> None:
        self._behaviour.poison.difference_update(message_ids)

    def hang(self, times: int, seconds: float = 5.0, *, then_accept: bool = False) -> None:
        """Sleep `seconds` (longer than the client's timeout) on the next `times` requests."""
        self._behaviour.hang = _Hang(times, seconds, then_accept)

    def hold_replies(self) -> None:
        """Take batches but keep the answer back until release_replies()."""
        self._replies_open.clear()

    def release_replies(self) -> None:
        self._replies_open.set()

    def recover(self) -> None:
        """Behave again: no failures, throttling, poison or hangs."""
        self._behaviour = _Behaviour()
        self._replies_open.set()

    # --- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> WebhookReceiver:
        await self._web.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Release sleeping handlers first so the server's graceful shutdown is quick.
        self._closing.set()
        self._replies_open.set()
        await self._web.__aexit__(exc_type, exc, tb)

    # --- the endpoint -----------------------------------------------------------------------

    async def _handle(self, request: Request) -> Response:
        arrived = time.monotonic()
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        key = headers.get("idempotency-key")

        def record(status: int, outcome: str, ids: tuple[int, ...] = ()) -> None:
            self.requests.append(
                ReceivedRequest(
                    at=arrived,
                    method=request.method,
                    path=request.url.path,
                    headers=headers,
                    body=body,
                    status=status,
                    outcome=outcome,
                    ids=ids,
                    idempotency_key=key,
                )
            )
            self.counts[outcome] += 1
            self._changed.set()

        problem, batch = _check(request.method, request.url.path, headers, body)
        if problem is not None:
            self.violations.append(problem)
            record(400, INVALID)
            return JSONResponse({"error": problem}, status_code=400)
        assert batch is not None
        ids = tuple(m["id"] for m in batch["messages"])
        b = self._behaviour

        if b.hang is not None and b.hang.remaining > 0:
            b.hang.remaining -= 1
            hang = b.hang
            record(504, HUNG, ids)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), hang.seconds)
            if hang.then_accept and not self._closing.is_set():
                self._take(batch, key)
            return JSONResponse({"error": "too late"}, status_code=504)

        if b.fail_status is not None and b.recover_on is not None and b.recover_on(ids):
            self.recover()
            b = self._behaviour
        if b.fail_status is not None:
            record(b.fail_status, FAILED, ids)
            return JSONResponse({"error": "receiver is failing"}, status_code=b.fail_status)

        if b.throttle_after is not None and b.throttle_remaining != 0:
            if b.throttle_remaining is not None:
                b.throttle_remaining -= 1
            record(429, THROTTLED, ids)
            return JSONResponse(
                {"error": "slow down"},
                status_code=429,
                headers={"Retry-After": str(b.throttle_after)},
            )

        bad = sorted(b.poison.intersection(ids))
        if bad:
            status = b.poison_status
            record(status, POISONED, ids)
            return JSONResponse({"error": f"message {bad[0]} is unacceptable"}, status_code=status)

        duplicate = key in self._seen_keys
        self._take(batch, key)
        record(200, DUPLICATE if duplicate else ACCEPTED, ids)
        if not self._replies_open.is_set():
            self.held += 1
            try:
                await self._replies_open.wait()
            finally:
                self.held -= 1
        return JSONResponse({"accepted": len(ids), "duplicate": duplicate})

    def _take(self, batch: dict[str, Any], key: str | None) -> None:
        self.received.extend(batch["messages"])
        if key is not None and key not in self._seen_keys:
            self._seen_keys.add(key)
            for message in batch["messages"]:
                self.ingested.setdefault(message["id"], message)


def _check(
    method: str, path: str, headers: dict[str, str], body: bytes
) -> tuple[str | None, dict[str, Any] | None]:
    """What is wrong with a request by the contract of fieldbridge.webhook/1, or its batch."""
    if method != "POST":
        return f"method {method}, expected POST", None
    if path != PATH:
        return f"path {path}, expected {PATH}", None
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        return f"Content-Type {content_type!r}, expected application/json", None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return f"body is not JSON: {exc}", None
    if not isinstance(data, dict):
        return "body is not a JSON object", None
    if data.get("schema") != SCHEMA:
        return f"schema {data.get('schema')!r}, expected {SCHEMA}", None
    sink, batch, messages = data.get("sink"), data.get("batch"), data.get("messages")
    if not isinstance(sink, str) or not sink:
        return "sink missing", None
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty array", None
    for index, message in enumerate(messages):
        problem = _check_message(message)
        if problem is not None:
            return f"messages[{index}]: {problem}", None
    ids = [m["id"] for m in messages]
    if ids != sorted(set(ids)):
        return f"message ids not strictly increasing: {ids}", None
    if not isinstance(batch, dict):
        return "batch missing", None
    expected = {"first_id": ids[0], "last_id": ids[-1], "count": len(ids)}
    if {k: batch.get(k) for k in expected} != expected:
        return f"batch {batch} does not match its messages {expected}", None
    key = headers.get("idempotency-key")
    wanted = f"{sink}:{ids[0]}-{ids[-1]}"
    if key != wanted:
        return f"Idempotency-Key {key!r}, expected {wanted!r}", None
    return None, data


def _check_message(message: object) -> str | None:
    if not isinstance(message, dict):
        return "not an object"
    missing = [f for f in MESSAGE_FIELDS if f not in message]
    if missing:
        return f"missing {', '.join(missing)}"
    if type(message["id"]) is not int or message["id"] < 1:
        return f"id {message['id']!r} is not a positive integer"
    if not isinstance(message["received_at"], str) or not ISO_Z.match(message["received_at"]):
        return f"received_at {message['received_at']!r} is not ISO 8601 UTC with Z"
    for name in ("source", "device"):
        if not isinstance(message[name], str) or not message[name]:
            return f"{name} must be a non-empty string"
    if "payload_b64" in message:
        try:
            base64.b64decode(message["payload_b64"], validate=True)
        except (TypeError, ValueError):
            return "payload_b64 is not base64"
    if not isinstance(message["readings"], list):
        return "readings must be an array"
    for index, reading in enumerate(message["readings"]):
        if not isinstance(reading, dict) or any(f not in reading for f in READING_FIELDS):
            return f"readings[{index}] must have {', '.join(READING_FIELDS)}"
        if not isinstance(reading["quantity"], str):
            return f"readings[{index}].quantity must be a string"
        value = reading["value"]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return f"readings[{index}].value must be a number or null"
        if type(reading["channel"]) is not int:
            return f"readings[{index}].channel must be an integer"
        if not isinstance(reading["measured_at"], str) or not ISO_Z.match(reading["measured_at"]):
            return f"readings[{index}].measured_at is not ISO 8601 UTC with Z"
    return None


@contextlib.contextmanager
def refused_url() -> Iterator[str]:
    """A URL on 127.0.0.1 where nothing listens: the port is held bound, never listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}{PATH}"
    finally:
        sock.close()
