"""HTTP source: POST /api/v1/ingest, answered only after the payload is committed."""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from fieldbridge.codecs import http_json
from fieldbridge.config import HttpSettings
from fieldbridge.errors import StoreError
from fieldbridge.ingest import Ingest
from fieldbridge.model import Accepted

JSON_TYPES = ("application/json",)


class HttpIngest:
    """The Starlette endpoint of the HTTP source."""

    def __init__(self, settings: HttpSettings, ingest: Ingest) -> None:
        self.name = settings.source_name
        self._settings = settings
        self._ingest = ingest
        self._tokens = [t.encode() for t in settings.tokens]

    async def handle(self, request: Request) -> Response:
        refusal = self._check_headers(request)
        if refusal is not None:
            return refusal
        body = await _read_limited(request, self._settings.max_body_bytes)
        if body is None:
            return _error(
                413, f"body larger than http.max_body_bytes ({self._settings.max_body_bytes} bytes)"
            )
        meta = {
            "remote": request.client.host if request.client else None,
            "path": request.url.path,
            "content_type": request.headers.get("content-type"),
        }
        try:
            outcome = await self._ingest.submit(self.name, body, http_json.decode, meta)
        except StoreError as exc:
            return _error(
                503, f"store unavailable, retry later: {exc}", headers={"Retry-After": "1"}
            )
        if isinstance(outcome, Accepted):
            return JSONResponse({"ids": list(outcome.ids), "duplicates": outcome.duplicates})
        return JSONResponse(
            {"error": outcome.reason, "quarantine_id": outcome.quarantine_id},
            status_code=400 if outcome.malformed else 422,
        )

    def _check_headers(self, request: Request) -> Response | None:
        if self._tokens:
            given = request.headers.get("authorization", "")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not any(
                hmac.compare_digest(token.encode(), t) for t in self._tokens
            ):
                return _error(
                    401,
                    "missing or wrong bearer token (see http.tokens)",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in JSON_TYPES and not content_type.endswith("+json"):
            return _error(415, f"Content-Type must be application/json, got {content_type!r}")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self._settings.max_body_bytes:
            return _error(
                413, f"body larger than http.max_body_bytes ({self._settings.max_body_bytes} bytes)"
            )
        return None


async def _read_limited(request: Request, limit: int) -> bytes | None:
    """The body, or None once it grows past `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)
