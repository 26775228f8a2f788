"""A bound on request bodies: the API reads at most MAX_BODY_BYTES of any request."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fieldbridge.web.api.errors import error_response

MAX_BODY_BYTES = 65_536  # every API body is a small JSON object


class BodyLimit:
    """413 with the error shape for a body over the limit: at once when Content-Length says
    so, else as soon as the bytes read pass it (a chunked body is never held whole)."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
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
        seen = 0

        async def bounded() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge
            return message

        try:
            await self.app(scope, bounded, send)
        except BodyTooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413,
            "body_too_large",
            f"the request body is over {self.max_bytes} bytes; API bodies are small JSON objects",
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


class BodyTooLarge(Exception):
    pass
