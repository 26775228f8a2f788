"""HTTP source: POST <path> on the HTTP server, answered only after the payload is committed."""

from __future__ import annotations

import asyncio

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from fieldbridge.codecs import http_json
from fieldbridge.errors import StoreError
from fieldbridge.ingest import Busy, Ingest, Reservation
from fieldbridge.model import Accepted
from fieldbridge.sources.base import HttpRoute
from fieldbridge.sources.http.settings import HttpSourceSettings

JSON_TYPES = ("application/json",)
BUSY_RETRY_AFTER = "2"  # seconds; ingest's byte budget frees as commits complete


class HttpSource:
    """One POST endpoint on fieldbridge's HTTP server ([http]), which is its transport: the
    server mounts `http_routes` and checks http.tokens before a request gets here."""

    def __init__(self, settings: HttpSourceSettings, ingest: Ingest) -> None:
        self.name = settings.name
        self._settings = settings
        self._ingest = ingest
        self.http_routes = (HttpRoute(settings.path, ("POST",), self.handle),)
        self._accepting = False
        self._in_flight = 0
        self._drained = asyncio.Event()
        self._drained.set()

    async def __aenter__(self) -> HttpSource:
        self._accepting = True
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._accepting = False
        await self._drained.wait()

    async def handle(self, request: Request) -> Response:
        if not self._accepting:
            return _error(
                503,
                f"source {self.name!r} is not accepting (fieldbridge is starting or stopping); "
                "retry later",
                headers={"Retry-After": "1"},
            )
        self._in_flight += 1
        self._drained.clear()
        try:
            return await self._take(request)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._drained.set()

    async def _take(self, request: Request) -> Response:
        refusal = self._check_headers(request)
        if refusal is not None:
            return refusal
        try:
            # The body's bytes count against ingest.max_in_flight_bytes before it is read, so
            # concurrent bodies wait (or get 503) instead of all sitting in memory at once.
            reservation = await self._ingest.reserve(self._expected_size(request), self.name)
        except Busy as exc:
            return _error(503, str(exc), headers={"Retry-After": BUSY_RETRY_AFTER})
        except StoreError as exc:
            return _error(
                503, f"store unavailable, retry later: {exc}", headers={"Retry-After": "1"}
            )
        try:
            return await self._ingest_body(request, reservation)
        finally:
            self._ingest.release(reservation)

    async def _ingest_body(self, request: Request, reservation: Reservation) -> Response:
        body = await _read_limited(request, self._settings.max_body_bytes)  # or ClientDisconnect
        if body is None:
            return self._too_large()
        meta = {
            "remote": request.client.host if request.client else None,
            "path": request.url.path,
            "content_type": request.headers.get("content-type"),
        }
        try:
            outcome = await self._ingest.submit(
                self.name, body, http_json.decode, meta, reservation=reservation
            )
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
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in JSON_TYPES and not content_type.endswith("+json"):
            return _error(415, f"Content-Type must be application/json, got {content_type!r}")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self._settings.max_body_bytes:
            return self._too_large()
        return None

    def _expected_size(self, request: Request) -> int:
        """The declared body size, or max_body_bytes for a body without Content-Length."""
        length = request.headers.get("content-length")
        if length is not None and length.isdigit():
            return int(length)
        return self._settings.max_body_bytes

    def _too_large(self) -> Response:
        limit = self._settings.max_body_bytes
        return _error(
            413, f"body larger than {limit} bytes (max_body_bytes of HTTP source {self.name!r})"
        )


async def _read_limited(request: Request, limit: int) -> bytes | None:
    """The body, or None once it grows past `limit` bytes.

    Raises ClientDisconnect saying how much arrived when the client goes away mid-body (the
    web server logs it as one line).
    """
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
    except ClientDisconnect:
        declared = request.headers.get("content-length")
        of = f" of {declared}" if declared is not None and declared.isdigit() else ""
        raise ClientDisconnect(
            f"in the middle of its body ({size}{of} bytes); nothing stored"
        ) from None
    return b"".join(chunks)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)
