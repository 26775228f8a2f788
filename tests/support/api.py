"""The REST API of a running in-process service, behind the real security gate, with callers
of every kind: admin and viewer logins, read and write tokens, nobody."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount

from fieldbridge.web.api import api_app
from fieldbridge.web.context import WebContext
from fieldbridge.web.security.login import LoginRoutes
from fieldbridge.web.security.middleware import SecurityMiddleware
from fieldbridge.web.security.public import public_paths
from fieldbridge.web.security.resolve import Resolver
from fieldbridge.web.server import build_app
from fieldbridge.web.spy import SpyHub
from tests.support.web import login, store_token, store_user
from tests.web.test_http_api import Running, serve

PASSWORD = "correct horse battery"
BASE = "http://fieldbridge.test"


def web_app(fb: Running) -> tuple[Starlette, WebContext]:
    """The service's parts served as app.py serves them, with the API mounted at /api."""
    service = fb.service
    http = service.settings.http
    ctx = WebContext(
        settings=service.settings,
        store=service.store,
        metrics=service.metrics,
        ingest=service.ingest,
        spy=SpyHub(service.ingest, max_watchers=1, queue_bytes=65_536),
        health=service.health,
        sinks=service.sinks,
        started_at=service.started_at,
    )
    gate = Middleware(
        SecurityMiddleware,
        resolver=Resolver(service.store, http.tokens),
        is_public=public_paths(set(), http.metrics_public),
    )
    app = build_app(
        [],
        service.health,
        service.metrics,
        pages=[*LoginRoutes(service.store, http).routes(), Mount("/api", api_app(ctx))],
        middleware=[gate],
    )
    return app, ctx


@dataclass
class Api:
    """A running service (fb: its own HTTP server, for ingest) and its API in-process."""

    fb: Running
    app: Starlette
    ctx: WebContext
    stack: AsyncExitStack
    _clients: dict[str, httpx.AsyncClient] = field(default_factory=dict)

    def client(self, headers: Mapping[str, str] | None = None) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app)
        return httpx.AsyncClient(
            transport=transport, base_url=BASE, headers=dict(headers or {}), timeout=30.0
        )

    async def _open(self, client: httpx.AsyncClient) -> httpx.AsyncClient:
        return await self.stack.enter_async_context(client)

    @property
    def nobody(self) -> httpx.AsyncClient:
        return self.client()

    async def token(self, scope: str) -> httpx.AsyncClient:
        """A script with an API token of `scope` (read or write)."""
        plain = await store_token(self.fb.store, scope)
        return await self._open(self.client({"Authorization": f"Bearer {plain}"}))

    async def user(self, role: str) -> httpx.AsyncClient:
        """A browser logged in as a new user of `role`, sending its session's CSRF token."""
        name = f"{role}-{uuid.uuid4().hex[:8]}"
        await store_user(self.fb.store, name, role, PASSWORD)
        client = await self._open(self.client())
        csrf = await login(client, name, PASSWORD)
        client.headers["X-CSRF-Token"] = csrf
        return client

    async def ingest(self, body: Any) -> list[int]:
        """Hand `body` to the service's HTTP ingest endpoint; the ids it was stored under."""
        answer = await self.fb.post(body)
        assert answer.status_code == 200, answer.text
        return list(answer.json()["ids"])


@asynccontextmanager
async def running_api(
    tmp_path: Path,
    *,
    store_url: str | None = None,
    sinks: Mapping[str, Any] | None = None,
    sources: Mapping[str, Any] | None = None,
) -> AsyncIterator[Api]:
    store = {"url": store_url} if store_url else None
    async with serve(tmp_path, store=store, sinks=sinks, sources=sources) as fb:
        app, ctx = web_app(fb)
        async with AsyncExitStack() as stack:
            yield Api(fb, app, ctx, stack)


def assert_error(answer: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The answer is `status` with the API's error shape (and `code`); returns the error."""
    assert answer.status_code == status, (answer.status_code, answer.text)
    body = answer.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["details"], dict)
    if code is not None:
        assert error["code"] == code, error
    return error
