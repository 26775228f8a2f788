"""A fake ThingsBoard HTTP device API (spec integrations.md §3.3, §3.6): the token in the path
(401 if unknown), 400 for a body that is not JSON in an allowed shape, per-device timeseries."""

from __future__ import annotations

import json
from types import TracebackType
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fieldbridge.web.server import WebServer
from tests.fakes.thingsboard import MS_AFTER


class FakeThingsBoardHttp:
    """`async with FakeThingsBoardHttp({token: device}) as tb:`; `url` is the base URL."""

    def __init__(self, device_tokens: dict[str, str]) -> None:
        self.device_tokens = dict(device_tokens)
        self.timeseries: dict[str, dict[int, dict[str, Any]]] = {}
        self.attributes: dict[str, dict[str, Any]] = {}
        self.violations: list[str] = []
        self.refused: list[str] = []  # paths answered 401 (token shown only in tests)
        methods = ["GET", "POST", "PUT", "DELETE"]
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=methods)])
        self._web = WebServer(app, "127.0.0.1:0", graceful_s=2, keep_alive_s=30)
        self.url = f"http://127.0.0.1:{self._web.port}"

    async def __aenter__(self) -> FakeThingsBoardHttp:
        await self._web.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._web.__aexit__(exc_type, exc, tb)

    def _bad(self, text: str) -> Response:
        self.violations.append(text)
        return Response(text, status_code=400)

    async def _handle(self, request: Request) -> Response:
        parts = request.url.path.strip("/").split("/")
        if request.method != "POST" or len(parts) != 4 or parts[:2] != ["api", "v1"]:
            return self._bad(f"{request.method} {request.url.path}: not a device API call")
        token, what = parts[2], parts[3]
        device = self.device_tokens.get(token)
        if device is None:
            self.refused.append(request.url.path)
            return Response(status_code=401)
        if request.headers.get("content-type") != "application/json":
            return self._bad(f"{what}: Content-Type {request.headers.get('content-type')!r}")
        try:
            body = json.loads(await request.body())
        except ValueError:
            return self._bad(f"{what}: not JSON")
        if what == "attributes" and isinstance(body, dict):
            self.attributes.setdefault(device, {}).update(body)
            return Response(status_code=200)
        if what != "telemetry":
            return self._bad(f"{what}: not telemetry or attributes")
        for point in body if isinstance(body, list) else [body]:
            if not isinstance(point, dict) or set(point) != {"ts", "values"}:
                return self._bad(f"{device}: {point!r} is not {{ts, values}}")
            ts = point["ts"]
            if type(ts) is not int or ts < MS_AFTER:
                return self._bad(f"{device}: ts {ts!r} is not an integer in milliseconds")
            if not isinstance(point["values"], dict) or not point["values"]:
                return self._bad(f"{device}: values {point['values']!r} is not an object")
            self.timeseries.setdefault(device, {}).setdefault(ts, {}).update(point["values"])
        return Response(status_code=200)
