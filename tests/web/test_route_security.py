"""Every route the server has, walked from its own route table: anonymous callers, viewers,
read tokens and cookie writes without CSRF are refused; only admins reach the admin routes.

New pages and API routes are covered without touching this file."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
from starlette.routing import BaseRoute, Mount, Route

from tests.support.web import login, store_token, store_user
from tests.web.test_http_api import Running, serve

PASSWORD = "correct horse battery"
SAFE = {"GET", "HEAD", "OPTIONS"}
PUBLIC = {"/login", "/logout", "/healthz", "/metrics", "/favicon.ico", "/api/v1/ingest"}
ADMIN = re.compile(r"(^|/)(users|tokens|audit)(/|$)")


def endpoints(routes: Sequence[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(method, path) of every route, path parameters filled in with 1."""
    for route in routes:
        if isinstance(route, Mount):
            yield from endpoints(route.routes, prefix + route.path)
        elif isinstance(route, Route):
            path = re.sub(r"\{[^}]+\}", "1", prefix + route.path)
            for method in sorted(route.methods or {"GET"}):
                if method != "HEAD":
                    yield method, path


def served(fb: Running) -> list[tuple[str, str]]:
    app = fb.service.web_app
    assert app is not None
    found = sorted(
        {
            (m, p)
            for m, p in endpoints(app.routes)
            if p not in PUBLIC and not p.startswith("/static")
        }
    )
    assert ("GET", "/api/v1/spy") in found and ("GET", "/api/v1/session") in found
    return found


async def call(
    client: httpx.AsyncClient, method: str, path: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    body = {} if method not in SAFE else None
    # A streaming route (the spy, the live view) must not be read to its end.
    async with client.stream(method, path, headers=headers, json=body) as response:
        return response


async def test_anonymous_callers_get_nothing_anywhere(tmp_path: Path) -> None:
    async with serve(tmp_path) as fb:
        base = str(fb.client.base_url).rstrip("/")
        async with httpx.AsyncClient(base_url=base, timeout=10.0) as nobody:
            for method, path in served(fb):
                answer = await call(nobody, method, path)
                machine = path.startswith("/api/")
                expected = 401 if machine else 303
                assert answer.status_code == expected, (method, path, answer.status_code)
                if not machine:
                    assert answer.headers["location"].startswith("/login?next=")


async def test_viewers_and_read_tokens_change_nothing(tmp_path: Path) -> None:
    async with serve(tmp_path) as fb:
        await store_user(fb.store, "vera", "viewer", PASSWORD)
        read = await store_token(fb.store, "read")
        base = str(fb.client.base_url).rstrip("/")
        async with (
            httpx.AsyncClient(base_url=base, timeout=10.0) as viewer,
            httpx.AsyncClient(base_url=base, timeout=10.0) as script,
        ):
            csrf = await login(viewer, "vera", PASSWORD)
            for method, path in served(fb):
                if method in SAFE and not ADMIN.search(path):
                    continue
                as_viewer = await call(viewer, method, path, {"X-CSRF-Token": csrf})
                assert as_viewer.status_code == 403, (method, path, as_viewer.status_code)
                as_token = await call(script, method, path, {"Authorization": f"Bearer {read}"})
                assert as_token.status_code == 403, (method, path, as_token.status_code)
        assert await fb.store.list_audit(action="device.update") == []


async def test_write_tokens_do_not_reach_the_admin_routes(tmp_path: Path) -> None:
    async with serve(tmp_path) as fb:
        write = await store_token(fb.store, "write")
        base = str(fb.client.base_url).rstrip("/")
        async with httpx.AsyncClient(base_url=base, timeout=10.0) as script:
            for method, path in served(fb):
                if ADMIN.search(path):
                    answer = await call(script, method, path, {"Authorization": f"Bearer {write}"})
                    assert answer.status_code == 403, (method, path, answer.status_code)


async def test_cookie_writes_without_csrf_are_refused_everywhere(tmp_path: Path) -> None:
    async with serve(tmp_path) as fb:
        await store_user(fb.store, "root", "admin", PASSWORD)
        base = str(fb.client.base_url).rstrip("/")
        async with httpx.AsyncClient(base_url=base, timeout=10.0) as admin:
            await login(admin, "root", PASSWORD)
            unsafe = [(m, p) for m, p in served(fb) if m not in SAFE]
            for method, path in unsafe:
                answer = await call(admin, method, path)
                assert answer.status_code == 403, (method, path, answer.status_code)
            for method, path in unsafe:
                answer = await call(admin, method, path, {"X-CSRF-Token": "forged"})
                assert answer.status_code == 403, (method, path, answer.status_code)
