"""The gate in front of the console and the API: who is asking, and CSRF on cookie writes.

Pure ASGI (not BaseHTTPMiddleware) so streaming answers (the live view) pass untouched.
Roles are checked by each route (`Principal.can_write`, `.is_admin`).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Collection
from urllib.parse import parse_qs, quote

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fieldbridge.errors import StoreError
from fieldbridge.web.security.principal import PRINCIPAL_KEY, Principal
from fieldbridge.web.security.resolve import SESSION_COOKIE, Resolver, bearer, cookie_value

log = logging.getLogger("fieldbridge.web.security")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_HEADER = b"x-csrf-token"
FORM_TYPE = "application/x-www-form-urlencoded"
MAX_FORM_BYTES = 65_536  # a form of the console; more is refused before it is read


def error_body(code: str, message: str) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message, "details": {}}})


async def respond(
    send: Send,
    status: int,
    body: bytes,
    *,
    content_type: bytes = b"application/json",
    headers: Collection[tuple[bytes, bytes]] = (),
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class SecurityMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        resolver: Resolver,
        is_public: Callable[[str, str], bool],
    ) -> None:
        self.app = app
        self.resolver = resolver
        self.is_public = is_public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.is_public(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        try:
            principal = await self._principal(headers)
        except StoreError as exc:
            log.warning("cannot check credentials: %s", exc)
            await respond(send, 503, error_body("store_unavailable", "the store does not answer"))
            return
        if principal is None:
            await self._refuse_anonymous(scope, send)
            return
        if principal.via == "session" and scope["method"] not in SAFE_METHODS:
            checked = await self._csrf(scope, receive, principal)
            if checked is None:
                await respond(
                    send,
                    403,
                    error_body(
                        "csrf_failed",
                        "missing or wrong CSRF token: send the X-CSRF-Token header "
                        "(or the csrf_token form field) of your session",
                    ),
                )
                return
            receive = checked
        scope[PRINCIPAL_KEY] = principal
        await self.app(scope, receive, send)

    async def _principal(self, headers: list[tuple[bytes, bytes]]) -> Principal | None:
        token = bearer(headers)
        if token is not None:
            return await self.resolver.from_token(token)
        session_id = cookie_value(headers, SESSION_COOKIE)
        if session_id is not None:
            return await self.resolver.from_session(session_id)
        return None

    async def _refuse_anonymous(self, scope: Scope, send: Send) -> None:
        path: str = scope["path"]
        if path.startswith("/api/") or path == "/metrics":  # machines: no login page for them
            await respond(
                send,
                401,
                error_body(
                    "unauthenticated",
                    "log in, or send Authorization: Bearer <token> "
                    "(fieldbridge tokens create --name NAME --scope read)",
                ),
                headers=[(b"www-authenticate", b"Bearer")],
            )
            return
        query = scope.get("query_string", b"").decode("latin-1")
        target = path + (f"?{query}" if query else "")
        location = "/login?next=" + quote(target, safe="")
        await respond(
            send,
            303,
            b"",
            content_type=b"text/plain",
            headers=[(b"location", location.encode())],
        )

    async def _csrf(self, scope: Scope, receive: Receive, principal: Principal) -> Receive | None:
        """A receive that replays the body when the CSRF token matches, else None."""
        expected = (principal.csrf_token or "").encode()
        if not expected:
            return None
        for key, value in scope["headers"]:
            if key == CSRF_HEADER:
                return receive if hmac.compare_digest(value, expected) else None
        content_type = ""
        for key, value in scope["headers"]:
            if key == b"content-type":
                content_type = value.decode("latin-1").split(";")[0].strip().lower()
        if content_type != FORM_TYPE:
            return None
        body = await read_body(receive, MAX_FORM_BYTES)
        if body is None:
            return None
        sent = parse_qs(body.decode("latin-1")).get("csrf_token", [""])[0].encode("latin-1")
        if not hmac.compare_digest(sent, expected):
            return None
        return replay(body, receive)


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None past `limit` bytes or when the client goes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes, then: Receive) -> Receive:
    """Hands the app the body already read, then the connection's own messages."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await then()

    return receive
