"""Runs the Starlette app on uvicorn inside fieldbridge's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Awaitable, Callable, Generator, Sequence
from types import TracebackType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.types import Scope

from fieldbridge.errors import ConfigError
from fieldbridge.observe import Metrics
from fieldbridge.web.connections import CLOSED_KEY, ConnectionGuard, ConnectionLimits

log = logging.getLogger("fieldbridge.web")

Endpoint = Callable[[Request], Awaitable[Response]]
HealthCheck = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]


def build_app(
    routes: Sequence[BaseRoute],
    health: HealthCheck,
    metrics: Metrics,
    spy: Endpoint | None = None,
    *,
    pages: Sequence[BaseRoute] = (),
    middleware: Sequence[Middleware] = (),
) -> Starlette:
    """The server's own endpoints, plus `routes` (those of the sources it is transport for),
    then `pages` (login, console, API), all behind `middleware` (the security gate)."""

    async def healthz(request: Request) -> Response:
        ok, detail = await health()
        return JSONResponse(detail, status_code=200 if ok else 503)

    async def prometheus(request: Request) -> Response:
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4")

    async def gone(request: Request, exc: Exception) -> Response:
        # Clients that hang up are routine on the internet: one line each, no traceback.
        host = request.client.host if request.client else "unknown"
        detail = str(exc) or "before its answer"
        closed = request.scope.get(CLOSED_KEY)
        if closed is not None:
            log.info("client %s: %s; closed %s", host, closed, detail)
        else:
            metrics.http_client_disconnects.inc()
            log.info("client %s went away %s", host, detail)
        return Response(status_code=400)  # nobody reads it: the connection is gone

    served: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
        *routes,
    ]
    if spy is not None:
        served.append(Route("/api/v1/spy", spy, methods=["GET"]))
    served.extend(pages)
    return Starlette(
        routes=served,
        middleware=list(middleware),
        exception_handlers={ClientDisconnect: gone, 404: api_errors, 405: api_errors},
    )


class OwnPathsMount(Mount):
    """A Mount that claims only the paths its app has a route for: /api/v1/ingest (a source's)
    and /api/v1/spy live beside the API under /api, and a wrong method on them stays 405."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is not Match.FULL:
            return match, child
        inner = {**scope, **child}
        if any(route.matches(inner)[0] is not Match.NONE for route in self.routes):
            return match, child
        return Match.NONE, {}


def api_errors(request: Request, exc: Exception) -> Response:
    """404 and 405 in the API's error shape under /api/, plain text elsewhere."""
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if not request.url.path.startswith("/api/"):
        return PlainTextResponse(str(exc.detail), status_code=exc.status_code, headers=headers)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    body = {"error": {"code": code, "message": str(exc.detail), "details": {}}}
    return JSONResponse(body, status_code=exc.status_code, headers=headers)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: fieldbridge decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def bind(listen: str) -> socket.socket:
    """A listening socket for host:port, or a ConfigError naming http.listen."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only when the
    # protocol says TCP; without it uvicorn's split writes wait ~40 ms on delayed ACKs.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except OSError as exc:
        sock.close()
        hint = "another program uses it" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise ConfigError(
            f"http.listen {listen}: cannot listen ({hint}); choose another address with "
            "http.listen or FIELDBRIDGE_HTTP__LISTEN"
        ) from exc
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class WebServer:
    """`async with WebServer(...)` serves until the block ends, then drains requests."""

    def __init__(
        self,
        app: Starlette,
        listen: str,
        *,
        graceful_s: int = 5,
        keep_alive_s: int = 5,
        guard: ConnectionGuard | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ) -> None:
        self._sock = bind(listen)
        self.port = int(self._sock.getsockname()[1])
        self.guard = guard or ConnectionGuard(ConnectionLimits())
        config = uvicorn.Config(
            app,
            # Pinned: the guard's deadlines and cap live in a subclass of this protocol.
            http=self.guard.protocol_class(),
            ws="none",
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=graceful_s,
            timeout_keep_alive=keep_alive_s,
            server_header=False,
            ssl_certfile=tls_cert,
            ssl_keyfile=tls_key,
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> WebServer:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]))
        while not self._server.started:
            if self._task.done():
                await self._task
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task
        self._sock.close()
