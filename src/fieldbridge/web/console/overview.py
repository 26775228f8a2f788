"""GET / : ingest rate per source, sinks, devices down and quarantine, refreshed live."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from fieldbridge.sinks.status import sink_rows
from fieldbridge.web.console.charts import rate_chart
from fieldbridge.web.console.templating import render
from fieldbridge.web.context import WebContext

WINDOW_S = 3600  # the ingest chart shows the last hour
BUCKET_S = 60  # in one-minute buckets
REFRESH_S = 5  # the page asks for a fresh panel this often


class Overview:
    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/", self.page, methods=["GET"]),
            Route("/overview/panel", self.panel, methods=["GET"]),
        ]

    async def page(self, request: Request) -> Response:
        return render(request, "overview.html", await self._values())

    async def panel(self, request: Request) -> Response:
        return render(request, "overview_panel.html", await self._values())

    async def _values(self) -> dict[str, Any]:
        store = self.ctx.store
        now = time.time()
        since = now - WINDOW_S
        buckets = await store.ingest_rate(since, BUCKET_S)
        totals: dict[str, int] = {}
        for bucket in buckets:
            totals[bucket.source] = totals.get(bucket.source, 0) + bucket.messages
        statuses = await store.device_status_counts()
        return {
            "chart": rate_chart(buckets, since, now, BUCKET_S),
            "totals": sorted(totals.items()),
            "sinks": await sink_rows(self.ctx.settings.sink_settings, store),
            "devices": sum(statuses.values()),
            "down": statuses.get("down", 0),
            "maintenance": statuses.get("maintenance", 0),
            "quarantined": await store.count_quarantine(),
            "refresh_s": REFRESH_S,
            "now": now,
        }
