"""The bearer-token check of the HTTP server's protected endpoints (http.tokens)."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

Endpoint = Callable[[Request], Awaitable[Response]]


class BearerTokens:
    """`Authorization: Bearer <token>` with one of `tokens`; no tokens means no check."""

    def __init__(self, tokens: Sequence[str]) -> None:
        self._tokens = [t.encode() for t in tokens]

    def refusal(self, request: Request) -> Response | None:
        """None when the request may pass, else the 401 to answer."""
        if not self._tokens:
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and any(
            hmac.compare_digest(token.encode(), t) for t in self._tokens
        ):
            return None
        return JSONResponse(
            {"error": "missing or wrong bearer token (see http.tokens)"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    def guard(self, endpoint: Endpoint) -> Endpoint:
        """`endpoint`, answering 401 first to a request without a valid token."""

        async def guarded(request: Request) -> Response:
            refusal = self.refusal(request)
            return refusal if refusal is not None else await endpoint(request)

        return guarded
