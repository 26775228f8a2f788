"""A fake Trap.NZ sensor API (token endpoint and sensor records) that checks spec §1.4.

`async with TrapNZServer(credentials) as trapnz:` serves on 127.0.0.1 inside the test's event
loop; `trapnz.token_url` and `trapnz.record_url` go in the sink's settings. Before `start()` and
after `stop()` the port is held but not listening, so a client's connection is refused: Trap.NZ
is down (start() again brings it back on the same port).

What it checks (integrations.md §1.4), and how it answers:

Token endpoint `POST /api-sensor/oauth/token`
  - the body is a form (`application/x-www-form-urlencoded`), else 400 and a violation;
  - `client_id` and `client_secret` match, else 401 `invalid_client`;
  - `grant_type=password` needs `username` and `password` that match, else 400 `invalid_grant`;
  - `grant_type=refresh_token` needs a refresh token it issued and has not rotated away: each
    refresh issues a new refresh token and revokes the one used (rotation), else 400
    `invalid_grant`; other grant types 400 `unsupported_grant_type`;
  - it answers `token_type` "Bearer", `expires_in` (configurable, short in the tests),
    `access_token` (1200 characters: real tokens exceed 1000) and `refresh_token`.

Record endpoint `POST /api-sensor/iot/sensor-record`
  - `Authorization: Bearer <token>` with a token it issued that has not expired, else 401
    (a missing `Bearer ` prefix is also a violation);
  - `Content-Type: application/hal+json`, else 415 and a violation;
  - the body is a JSON object with a non-empty `dev_id`; `metadata.time` ISO 8601 (plain, or
    Drupal's `[{"value": ...}]`); `payload_fields.type` `sensor_report` (plain, or
    `[{"target_id": ...}]`); `payload_fields.field_event` one of Sprung, Set, Vibration,
    Heartbeat, Baitlevel; the other `field_*` values in the `[{"value": ...}]` wrapper. A body
    that breaks this gets 422 with the reason and is a violation.
  - Success is 201 with `{"id": n}`: an assumption (the docs are cut off before the answer).

Every accepted record is in `records` (what Trap.NZ would store), apart from the HTTP log in
`requests`. Misbehaviour: `fail(status, times)` (every endpoint), `fail_tokens(status,
times)` (the token endpoint only), `expire_tokens()` (every access token issued so far now
fails with 401), `refuse_refresh()` (refresh tokens are refused, as after a server-side
revocation), `refuse(dev_id, status)` (records of one device refused, e.g. 422); `recover()`
undoes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fieldbridge.web.server import WebServer

TOKEN_PATH = "/api-sensor/oauth/token"
RECORD_PATH = "/api-sensor/iot/sensor-record"
EVENTS = ("Sprung", "Set", "Vibration", "Heartbeat", "Baitlevel")
TOKEN_LENGTH = 1200


@dataclass(frozen=True)
class Credentials:
    client_id: str = "fieldbridge-client"
    client_secret: str = "s3cret-client-Trap"
    username: str = "ranger@example.org"
    password: str = "pa55word-Trap"


@dataclass(frozen=True)
class Record:
    """A sensor record as Trap.NZ took it."""

    dev_id: str
    time: datetime
    event: str
    fields: dict[str, Any]  # payload_fields other than type and field_event, unwrapped
    body: dict[str, Any]
    taken_at: float  # time.time() when it was accepted


@dataclass(frozen=True)
class Exchange:
    """One request as the fake saw it, with the answer it gave."""

    at: float
    path: str
    status: int
    grant: str | None = None  # token endpoint: the grant type asked for
    dev_id: str | None = None


@dataclass
class _Issued:
    expires_at: float  # time.monotonic()
    expired: bool = False  # expire_tokens() ended it early


@dataclass
class _Failure:
    status: int
    remaining: int | None  # None: until recover()

    def take(self) -> bool:
        if self.remaining == 0:
            return False
        if self.remaining is not None:
            self.remaining -= 1
        return True


@dataclass
class _Behaviour:
    fail: _Failure | None = None
    fail_tokens: _Failure | None = None
    refuse_refresh: bool = False
    refuse: dict[str, int] = field(default_factory=dict)


class TrapNZServer:
    """The Trap.NZ sensor API on a real socket."""

    def __init__(self, credentials: Credentials | None = None, *, expires_in: int = 300) -> None:
        self.credentials = credentials or Credentials()
        self.expires_in = expires_in
        self.records: list[Record] = []
        self.requests: list[Exchange] = []
        self.violations: list[str] = []
        self.counts: Counter[str] = Counter()  # token grants, 401s, refusals by kind
        self.access_tokens: dict[str, _Issued] = {}
        self.refresh_tokens: dict[str, bool] = {}  # issued -> still valid
        self._behaviour = _Behaviour()
        self._changed = asyncio.Event()
        self._web: WebServer | None = None
        self._held: socket.socket | None = None
        self.port = self._hold(0)
        base = f"http://127.0.0.1:{self.port}"
        self.token_url = base + TOKEN_PATH
        self.record_url = base + RECORD_PATH
        methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
        self._app = Starlette(routes=[Route("/{path:path}", self._handle, methods=methods)])

    # --- views -----------------------------------------------------------------------------

    def grants(self, grant: str) -> int:
        """How many tokens were given for this grant type."""
        return self.counts[f"granted:{grant}"]

    def tokens_expired(self) -> bool:
        """Whether every access token issued so far has expired (by expires_in)."""
        now = time.monotonic()
        return all(i.expired or now >= i.expires_at for i in self.access_tokens.values())

    @property
    def secrets_issued(self) -> list[str]:
        return [*self.access_tokens, *self.refresh_tokens]

    async def wait_for(self, condition: Callable[[], bool], within: float = 20.0) -> None:
        deadline = time.monotonic() + within
        while not condition():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"fake Trap.NZ: condition not met within {within}s; counts={dict(self.counts)}"
                    f" records={[r.dev_id for r in self.records][-20:]}"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.1))

    # --- misbehaviour ----------------------------------------------------------------------

    def fail(self, status: int = 503, times: int | None = None) -> None:
        self._behaviour.fail = _Failure(status, times)

    def fail_tokens(self, status: int = 503, times: int | None = None) -> None:
        self._behaviour.fail_tokens = _Failure(status, times)

    def refuse_refresh(self) -> None:
        self._behaviour.refuse_refresh = True

    def refuse(self, dev_id: str, status: int = 422) -> None:
        self._behaviour.refuse[dev_id] = status

    def expire_tokens(self) -> None:
        for issued in self.access_tokens.values():
            issued.expired = True

    def recover(self) -> None:
        self._behaviour = _Behaviour()

    # --- lifecycle -------------------------------------------------------------------------

    def _hold(self, port: int) -> int:
        """Bind the port without listening: connections to it are refused."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        self._held = sock
        return int(sock.getsockname()[1])

    async def start(self) -> None:
        if self._web is not None:
            return
        if self._held is not None:
            self._held.close()
            self._held = None
        self._web = WebServer(self._app, f"127.0.0.1:{self.port}", graceful_s=1, keep_alive_s=30)
        await self._web.__aenter__()

    async def stop(self) -> None:
        if self._web is not None:
            await self._web.__aexit__(None, None, None)
            self._web = None
            self._hold(self.port)

    async def __aenter__(self) -> TrapNZServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
        if self._held is not None:
            self._held.close()
            self._held = None

    # --- endpoints -------------------------------------------------------------------------

    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        path = request.url.path
        failure = self._behaviour.fail
        if failure is not None and failure.take():
            return self._answer(path, failure.status, {"message": "Service unavailable"})
        if path == TOKEN_PATH and request.method == "POST":
            return self._token(request, body)
        if path == RECORD_PATH and request.method == "POST":
            return self._record(request, body)
        self.violations.append(f"{request.method} {path}: no such endpoint")
        return self._answer(path, 404, {"message": "No route found"})

    def _answer(
        self,
        path: str,
        status: int,
        data: dict[str, Any],
        *,
        grant: str | None = None,
        dev_id: str | None = None,
        kind: str | None = None,
    ) -> Response:
        self.requests.append(Exchange(time.monotonic(), path, status, grant, dev_id))
        if kind is not None:
            self.counts[kind] += 1
        self._changed.set()
        return JSONResponse(data, status_code=status)

    def _token(self, request: Request, body: bytes) -> Response:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/x-www-form-urlencoded":
            self.violations.append(f"token request with Content-Type {media!r}, not a form")
            return self._answer(TOKEN_PATH, 400, {"error": "invalid_request"})
        form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        grant = form.get("grant_type", "")
        failure = self._behaviour.fail_tokens
        if failure is not None and failure.take():
            return self._answer(TOKEN_PATH, failure.status, {"message": "down"}, grant=grant)
        creds = self.credentials
        if (form.get("client_id"), form.get("client_secret")) != (
            creds.client_id,
            creds.client_secret,
        ):
            return self._answer(
                TOKEN_PATH,
                401,
                {"error": "invalid_client", "error_description": "Client authentication failed"},
                grant=grant,
                kind="refused:invalid_client",
            )
        if grant == "password":
            if not form.get("username") or not form.get("password"):
                self.violations.append("password grant without username or password")
            if (form.get("username"), form.get("password")) != (creds.username, creds.password):
                return self._refused(grant, "The user credentials were incorrect.")
        elif grant == "refresh_token":
            given = form.get("refresh_token", "")
            if self._behaviour.refuse_refresh or not self.refresh_tokens.get(given, False):
                return self._refused(grant, "The refresh token is invalid.")
            self.refresh_tokens[given] = False  # rotated: each refresh token works once
        else:
            return self._answer(TOKEN_PATH, 400, {"error": "unsupported_grant_type"}, grant=grant)
        access = secrets.token_urlsafe(TOKEN_LENGTH)[:TOKEN_LENGTH]
        refresh = secrets.token_urlsafe(64)
        self.access_tokens[access] = _Issued(time.monotonic() + self.expires_in)
        self.refresh_tokens[refresh] = True
        return self._answer(
            TOKEN_PATH,
            200,
            {
                "token_type": "Bearer",
                "expires_in": self.expires_in,
                "access_token": access,
                "refresh_token": refresh,
            },
            grant=grant,
            kind=f"granted:{grant}",
        )

    def _refused(self, grant: str, why: str) -> Response:
        return self._answer(
            TOKEN_PATH,
            400,
            {"error": "invalid_grant", "error_description": why},
            grant=grant,
            kind=f"refused:{grant}",
        )

    def _record(self, request: Request, body: bytes) -> Response:
        authorization = request.headers.get("authorization", "")
        if not authorization.startswith("Bearer "):
            self.violations.append(f"Authorization {authorization[:20]!r} lacks 'Bearer '")
            return self._answer(RECORD_PATH, 401, {"message": "Unauthorized"}, kind="unauthorized")
        issued = self.access_tokens.get(authorization.removeprefix("Bearer "))
        if issued is None:
            return self._answer(RECORD_PATH, 401, {"message": "Unauthorized"}, kind="unauthorized")
        if issued.expired or time.monotonic() >= issued.expires_at:
            return self._answer(RECORD_PATH, 401, {"message": "Token expired"}, kind="expired")
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/hal+json":
            self.violations.append(f"record with Content-Type {media!r}, not application/hal+json")
            return self._answer(RECORD_PATH, 415, {"message": "Unsupported Media Type"})
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        problem, record = _check_record(data)
        if problem is not None or record is None:
            self.violations.append(f"record refused: {problem}")
            return self._answer(RECORD_PATH, 422, {"message": f"Unprocessable Entity: {problem}"})
        refused = self._behaviour.refuse.get(record.dev_id)
        if refused is not None:
            return self._answer(
                RECORD_PATH,
                refused,
                {"message": f"Unprocessable Entity: no sensor {record.dev_id}"},
                dev_id=record.dev_id,
                kind="refused:record",
            )
        self.records.append(record)
        return self._answer(
            RECORD_PATH, 201, {"id": len(self.records)}, dev_id=record.dev_id, kind="record"
        )


def _unwrap(value: Any, key: str = "value") -> Any:
    """Drupal's `[{"value": X}]` (or target_id) wrapper, or the plain value."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        return value[0].get(key)
    return value


def _check_record(data: Any) -> tuple[str | None, Record | None]:
    if not isinstance(data, dict):
        return "the body is not a JSON object", None
    dev_id = data.get("dev_id")
    if not isinstance(dev_id, str) or not dev_id:
        return "dev_id must be a non-empty string", None
    metadata = data.get("metadata")
    if not isinstance(metadata, dict):
        return "metadata must be an object", None
    stamp = _unwrap(metadata.get("time"))
    if not isinstance(stamp, str):
        return "metadata.time is required", None
    try:
        when = datetime.fromisoformat(stamp)
    except ValueError:
        return f"metadata.time {stamp[:40]!r} is not ISO 8601", None
    fields = data.get("payload_fields")
    if not isinstance(fields, dict):
        return "payload_fields must be an object", None
    if _unwrap(fields.get("type"), "target_id") != "sensor_report":
        return "payload_fields.type must be sensor_report", None
    event = _unwrap(fields.get("field_event"))
    if event not in EVENTS:
        return f"field_event {event!r} is not one of {', '.join(EVENTS)}", None
    others: dict[str, Any] = {}
    for name, value in fields.items():
        if name in ("type", "field_event"):
            continue
        if not name.startswith("field_"):
            return f"payload_fields.{name} is not a field", None
        if not (isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict)):
            return f"payload_fields.{name} is not in the [{{'value': ...}}] form", None
        others[name] = value[0].get("value")
    return None, Record(dev_id, when, event, others, data, time.time())
