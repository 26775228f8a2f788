"""A bound on request bodies: the API reads at most MAX_BODY_BYTES of any request."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from fieldbridge.web.api.errors import error_response
from fieldbridge.web.security.middleware import read_body, replay

MAX_BODY_BYTES = 65_536  # every API body is a small JSON object
BODILESS = frozenset({"GET", "HEAD", "OPTIONS"})


class BodyLimit:
    """413 with the error shape for a body over the limit: at once when Content-Length says
    so, else as soon as the bytes read pass it (a chunked body is never held past it). A body
    within it is read before the route runs, so no route sees a half-read body."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in BODILESS:
            await self.app(scope, receive, send)
            return
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = self.max_bytes + 1
                if declared > self.max_bytes:
                    await self._refuse(scope, receive, send)
                    return
        body = await read_body(receive, self.max_bytes)
        if body is None:  # over the limit, or the client went away
            await self._refuse(scope, receive, send)
            return
        await self.app(scope, replay(body, receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413,
            "body_too_large",
            f"the request body is over {self.max_bytes} bytes; API bodies are small JSON objects",
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)
