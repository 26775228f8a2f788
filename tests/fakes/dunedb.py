"""A fake DUNE DB API (db642cd, plus the 2024 /confirmShortUUID) and its Auth0 tenant (§2.5).

`async with DuneDBServer() as dune:` serves both on 127.0.0.1 (a free port) inside the test's
event loop: `dune.url` is the base for `auth0_domain` and `db_domain` (a full URL works for
both). `DuneDBServer(confirm=False)` is the 2022 server, without /confirmShortUUID.

What it checks, and how it answers (integrations.md §2.1-2.5):

Auth0 `POST /oauth/token`
  - a JSON body (`Content-Type: application/json`), else 415 and a violation;
  - `grant_type` client_credentials, else 403 `unsupported_grant_type`; `audience`
    https://apa.dunedb.org/api/, else 403 `access_denied`; `client_id`/`client_secret` match,
    else 401 `{"error":"access_denied","error_description":"Unauthorized"}`;
  - the reply is exactly `{"access_token":"<jwt>","scope":"...","expires_in":86400,
    "token_type":"Bearer"}` in that key order with no spaces (the seed client split the raw
    text on `"`: element 3 is the token, 13 the type); the JWT's payload has `azp` (the client
    id) and `permissions`; its signature is a dummy (the DB only decodes it).

DB API, mounted at `/api` and `/json`
  - every call needs `authorization` starting with `Bearer ` (else 401, plain text; none at
    all: 500, as Express answers the middleware's throw); the token is decoded, not verified;
  - permissions from the token per route: GET /component/:uuid components:view, POST
    /component components:edit, GET /action/:id actions:view, POST /action actions:perform,
    else 403 `{"error": "Incorrect permissions - you need <p>, but have <list>"}`;
  - route regexes: /component/ a 36-character hex UUID with dashes, /action/ 24 hex,
    /convertShortUUID/ and /confirmShortUUID/ 20-22 characters of the flickr base-58 alphabet
    and `-`; anything else falls to Express's 404 page (text/html "Cannot GET ...");
  - POST bodies are JSON objects (`Content-Type: application/json`) with the required fields
    (componentUuid+formId+data, or typeFormId+componentUuid+data) and a known type form, else
    500 `{"error": "Error: ..."}`;
  - each save inserts a new version (`validity.version` + 1, `ancestor_id` the posted `_id`),
    GET returns the newest, `null` when there is none; UUID and id results are JSON strings;
    /newComponentUUID answers a version-1 UUID; /convertShortUUID decodes base 58 without a
    look in the DB (2022); /confirmShortUUID tries base 58 then base 57 and answers 404
    `{"error": "There is no component record with component UUID = ..."}` (2024).
  - M2M insertions carry `insertion.user` = {user_id: azp, displayName: "M2M Client",
    emails: ["none"]}.

`components` and `actions` hold every version by id; `requests` is the HTTP log; `violations`
lists what a real server would refuse that the client should never have sent. Misbehaviour:
`fail(status, times, path=...)`, `lose_answers(times)` (POST /action is done, then the answer
never comes: the client times out).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import secrets
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from fieldbridge.clients.short_uuid import BASE57, FLICKR_BASE58, decode, encode
from fieldbridge.web.server import WebServer

AUDIENCE = "https://apa.dunedb.org/api/"
PERMISSIONS = ("components:view", "components:edit", "actions:view", "actions:perform")
COMPONENT_FORMS = {"basic_component": "Basic Component", "tension_rig": "Tension Rig"}
ACTION_FORMS = {"my_action": "My Action", "wire_tension": "Wire Tension Measurement"}
UUID36 = re.compile(r"[0-9a-fA-F-]{36}")
ACTION_ID = re.compile(r"[0-9a-f]{24}")
SHORT = re.compile(r"[123456789abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ-]{20,22}")


@dataclass(frozen=True)
class Exchange:
    at: float
    method: str
    path: str
    status: int


@dataclass
class _Failure:
    status: int
    remaining: int | None
    path: str | None

    def take(self, path: str) -> bool:
        if self.remaining == 0 or (self.path is not None and not path.startswith(self.path)):
            return False
        if self.remaining is not None:
            self.remaining -= 1
        return True


@dataclass
class _Behaviour:
    fail: _Failure | None = None
    lose_answers: int = 0
    lose_for: float = 5.0


@dataclass
class DuneDBServer:
    client_id: str = "dune-m2m-client"
    client_secret: str = "dune-M2M-secret-0123456789"
    permissions: tuple[str, ...] = PERMISSIONS
    confirm: bool = True  # the 2024 server, with /confirmShortUUID
    components: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    actions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    requests: list[Exchange] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    tokens: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._behaviour = _Behaviour()
        self._closing = asyncio.Event()
        methods = ["GET", "POST", "PUT", "DELETE", "PATCH"]
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=methods)])
        self._web = WebServer(app, "127.0.0.1:0", graceful_s=1, keep_alive_s=30)
        self.port = self._web.port
        self.url = f"http://127.0.0.1:{self.port}"

    # --- views and set-up -------------------------------------------------------------------

    def component(self, component_uuid: str) -> dict[str, Any] | None:
        versions = self.components.get(component_uuid)
        return versions[-1] if versions else None

    def action(self, action_id: str) -> dict[str, Any] | None:
        versions = self.actions.get(action_id)
        return versions[-1] if versions else None

    def add_component(
        self, component_uuid: uuid.UUID, form_id: str = "basic_component", **data: Any
    ) -> dict[str, Any]:
        """A component the DB had before the test (made by someone else)."""
        return self._save_component(
            {"componentUuid": str(component_uuid), "formId": form_id, "data": data}, "someone"
        )

    def fail(self, status: int = 503, times: int | None = None, path: str | None = None) -> None:
        self._behaviour.fail = _Failure(status, times, path)

    def lose_answers(self, times: int = 1, seconds: float = 5.0) -> None:
        self._behaviour.lose_answers = times
        self._behaviour.lose_for = seconds

    def recover(self) -> None:
        self._behaviour = _Behaviour()

    def token_for(self, permissions: tuple[str, ...]) -> str:
        """A JWT as the tenant would issue it to a client with these permissions."""
        return _jwt(self.client_id, permissions, self.url)

    # --- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> DuneDBServer:
        await self._web.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing.set()
        await self._web.__aexit__(exc_type, exc, tb)

    # --- endpoints --------------------------------------------------------------------------

    async def _handle(self, request: Request) -> Response:
        path = request.url.path
        body = await request.body()
        failure = self._behaviour.fail
        if failure is not None and failure.take(path):
            return self._log(request, JSONResponse({"error": "down"}, failure.status))
        if path == "/oauth/token":
            return self._log(request, self._token(request, body))
        mount = next((m for m in ("/api", "/json") if path.startswith(m + "/")), None)
        if mount is None:
            return self._log(request, _express_404(request.method, path))
        response = await self._api(request, path.removeprefix(mount), body)
        return self._log(request, response)

    def _log(self, request: Request, response: Response) -> Response:
        self.requests.append(
            Exchange(time.monotonic(), request.method, request.url.path, response.status_code)
        )
        return response

    def _token(self, request: Request, body: bytes) -> Response:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            self.violations.append(f"token request with Content-Type {media!r}, not JSON")
            return JSONResponse({"error": "unsupported_media_type"}, 415)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            self.violations.append("token request body is not a JSON object")
            return JSONResponse({"error": "invalid_request"}, 400)
        if data.get("grant_type") != "client_credentials":
            self.violations.append(f"grant_type {data.get('grant_type')!r}")
            return JSONResponse({"error": "unsupported_grant_type"}, 403)
        if data.get("audience") != AUDIENCE:
            self.violations.append(f"audience {data.get('audience')!r}")
            return JSONResponse(
                {"error": "access_denied", "error_description": "Service not found"}, 403
            )
        if (data.get("client_id"), data.get("client_secret")) != (
            self.client_id,
            self.client_secret,
        ):
            self.counts["refused:token"] += 1
            return JSONResponse(
                {"error": "access_denied", "error_description": "Unauthorized"}, 401
            )
        token = self.token_for(self.permissions)
        self.tokens.append(token)
        self.counts["granted"] += 1
        # Auth0's key order, no spaces: the seed client depends on it (§2.1).
        raw = (
            f'{{"access_token":"{token}","scope":"{" ".join(self.permissions)}",'
            '"expires_in":86400,"token_type":"Bearer"}'
        )
        return Response(raw, 200, media_type="application/json")

    async def _api(self, request: Request, path: str, body: bytes) -> Response:
        authorization = request.headers.get("authorization")
        if authorization is None:
            self.violations.append(f"{request.method} {path} without an authorization header")
            return PlainTextResponse("TypeError: Cannot read properties of undefined", 500)
        if not authorization.startswith("Bearer "):
            self.violations.append(f"authorization {authorization[:12]!r} lacks 'Bearer '")
            return PlainTextResponse("JWT token required", 401)
        claims = _decode_jwt(authorization.removeprefix("Bearer "))
        if claims is None:
            return PlainTextResponse("Token not decoded", 401)
        user = {
            "user_id": claims.get("azp"),
            "permissions": list(claims.get("permissions", [])),
        }
        method = request.method
        parts = path.strip("/").split("/")
        if method == "GET" and parts == ["newComponentUUID"]:
            return JSONResponse(str(uuid.uuid1()))
        if method == "GET" and len(parts) == 2 and parts[0] == "convertShortUUID":
            if not SHORT.fullmatch(parts[1]):
                return _express_404(method, path)
            return JSONResponse(str(_short_uuid_to_uuid(parts[1])))
        if method == "GET" and len(parts) == 2 and parts[0] == "confirmShortUUID" and self.confirm:
            if not SHORT.fullmatch(parts[1]):
                return _express_404(method, path)
            return self._confirm(parts[1])
        if method == "GET" and len(parts) == 2 and parts[0] == "component":
            if not UUID36.fullmatch(parts[1]):
                return _express_404(method, path)
            return self._guarded(user, "components:view", lambda: self.component(parts[1]))
        if method == "GET" and len(parts) == 2 and parts[0] == "action":
            if not ACTION_ID.fullmatch(parts[1]):
                return _express_404(method, path)
            return self._guarded(user, "actions:view", lambda: self.action(parts[1]))
        if method == "POST" and parts in (["component"], ["action"]):
            needed = "components:edit" if parts == ["component"] else "actions:perform"
            denied = self._denied(user, needed)
            if denied is not None:
                return denied
            media = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if media != "application/json":
                self.violations.append(f"POST {path} with Content-Type {media!r}")
            try:
                data = orjson.loads(body)
            except orjson.JSONDecodeError:
                data = None
            if not isinstance(data, dict):
                self.violations.append(f"POST {path}: the body is not a JSON object")
                return JSONResponse({"error": "Error: no body"}, 500)
            try:
                if parts == ["component"]:
                    saved = self._save_component(data, user["user_id"])
                    return JSONResponse(saved["componentUuid"])
                saved = self._save_action(data, user["user_id"])
            except ValueError as exc:
                return JSONResponse({"error": f"Error: {exc}"}, 500)
            if self._behaviour.lose_answers > 0:  # done, but the answer never arrives
                self._behaviour.lose_answers -= 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), self._behaviour.lose_for)
            return JSONResponse(saved["actionId"])
        return _express_404(method, path)

    def _denied(self, user: dict[str, Any], permission: str) -> Response | None:
        if permission in user["permissions"]:
            return None
        self.counts["denied"] += 1
        have = ", ".join(user["permissions"])
        return JSONResponse(
            {"error": f"Incorrect permissions - you need {permission}, but have {have}"}, 403
        )

    def _guarded(self, user: dict[str, Any], permission: str, read: Any) -> Response:
        denied = self._denied(user, permission)
        return denied if denied is not None else JSONResponse(read())

    def _confirm(self, short: str) -> Response:
        as58 = str(_short_uuid_to_uuid(short))
        if as58 in self.components:
            return JSONResponse(as58)
        with contextlib.suppress(ValueError):
            as57 = str(decode(short, BASE57))
            if as57 in self.components:
                return JSONResponse(as57)
        return JSONResponse(
            {"error": f"There is no component record with component UUID = {as58}"}, 404
        )

    # --- saving, as Components.js / Actions.js do -------------------------------------------

    def _save_component(self, data: dict[str, Any], user_id: str | None) -> dict[str, Any]:
        for key in ("componentUuid", "formId", "data"):
            if key not in data:
                raise ValueError(f"Component::save() - the input has no '{key}'")
        form = data["formId"]
        if form not in COMPONENT_FORMS:
            raise ValueError(f"Component::save() - unknown component type form ID {form}")
        try:
            component = uuid.UUID(str(data["componentUuid"]))
        except ValueError:
            raise ValueError(f"invalid componentUuid {data['componentUuid']!r}") from None
        key = str(component)
        versions = self.components.setdefault(key, [])
        record = self._versioned(data, versions, user_id)
        record.update(
            recordType="component",
            componentUuid=key,
            shortUuid=encode(component),
            formId=form,
            formName=data.get("formName") or COMPONENT_FORMS[form],
        )
        versions.append(record)
        return record

    def _save_action(self, data: dict[str, Any], user_id: str | None) -> dict[str, Any]:
        for key in ("typeFormId", "componentUuid", "data"):
            if key not in data:
                raise ValueError(f"Action::save() - the input has no '{key}'")
        form = data["typeFormId"]
        if form not in ACTION_FORMS:
            raise ValueError(f"Action::save() - unknown action type form ID {form}")
        action_id = data.get("actionId") or secrets.token_hex(12)
        if not ACTION_ID.fullmatch(str(action_id)):
            raise ValueError(f"invalid actionId {action_id!r}")
        versions = self.actions.setdefault(action_id, [])
        record = self._versioned(data, versions, user_id)
        record.update(
            recordType="action",
            actionId=action_id,
            typeFormId=form,
            typeFormName=data.get("typeFormName") or ACTION_FORMS[form],
            componentUuid=str(data["componentUuid"]),
        )
        versions.append(record)
        self.counts["actions saved"] += 1
        return record

    def _versioned(
        self, data: dict[str, Any], versions: list[dict[str, Any]], user_id: str | None
    ) -> dict[str, Any]:
        previous = versions[-1] if versions else None
        record = dict(data)
        now = datetime.now(UTC).isoformat()
        record["_id"] = secrets.token_hex(12)
        record["insertion"] = {
            "insertDate": now,
            "ip": "127.0.0.1",
            "user": {"user_id": user_id, "displayName": "M2M Client", "emails": ["none"]},
        }
        record["validity"] = {
            "startDate": now,
            "version": 1 if previous is None else previous["validity"]["version"] + 1,
            "ancestor_id": data.get("_id") if previous is not None else None,
        }
        return record


def _short_uuid_to_uuid(short: str) -> uuid.UUID:
    """short-uuid 4.2.0's toUUID: base 58 to hex, padded to 32 digits, the first 32 taken
    (a base-57 id read in base 58 can exceed 128 bits: JavaScript keeps the leading digits)."""
    number = 0
    for char in short.replace("-", ""):
        number = number * 58 + FLICKR_BASE58.index(char)
    return uuid.UUID(hex=f"{number:032x}"[:32])


def _express_404(method: str, path: str) -> Response:
    return Response(
        f"<!DOCTYPE html><html><body><pre>Cannot {method} {path}</pre></body></html>",
        404,
        media_type="text/html",
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(client_id: str, permissions: tuple[str, ...], issuer: str) -> str:
    now = int(time.time())
    header = {"alg": "RS256", "typ": "JWT", "kid": "fake"}
    payload = {
        "iss": f"{issuer}/",
        "sub": f"{client_id}@clients",
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 86400,
        "azp": client_id,
        "scope": " ".join(permissions),
        "gty": "client-credentials",
        "permissions": list(permissions),
    }
    signature = _b64(secrets.token_bytes(32))  # dummy: the DB decodes, never verifies
    return f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(payload))}.{signature}"


def _decode_jwt(token: str) -> dict[str, Any] | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        return None
    return payload if isinstance(payload, dict) else None
