"""GET /devices and /devices/{id}: the searchable device table and one device's page."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from fieldbridge.model import Device, DeviceStatus
from fieldbridge.web.console.charts import quantity_chart
from fieldbridge.web.console.device_flags import flag_switches
from fieldbridge.web.console.efento_form import EFENTO_KIND
from fieldbridge.web.console.templating import render
from fieldbridge.web.context import WebContext

SHOWN = 500  # devices a table shows at most
RANGES = {"1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400}
DEFAULT_RANGE = "24h"
RAW_WINDOW_S = 7 * 86400  # raw messages are looked for this far before the last one
RAW_SHOWN = 10
CHART_POINTS = 5000  # readings per quantity a chart plots at most


class Devices:
    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/devices", self.table, methods=["GET"]),
            Route("/devices/{device_id:path}", self.page, methods=["GET"]),
        ]

    async def table(self, request: Request) -> Response:
        """The whole page, or only its rows when htmx asks (the search box as you type)."""
        text = request.query_params.get("q", "").strip()
        status = request.query_params.get("status", "")
        chosen = DeviceStatus(status) if status in set(DeviceStatus) else None
        found = await self.ctx.store.find_devices(text, status=chosen, limit=SHOWN)
        values = {"devices": found, "q": text, "status": status, "shown": SHOWN}
        if request.headers.get("HX-Request") and request.headers.get("HX-Target") == "device-rows":
            return render(request, "device_rows.html", values)
        return render(request, "devices.html", values)

    async def page(self, request: Request) -> Response:
        device_id = request.path_params["device_id"]
        store = self.ctx.store
        device = await store.get_device(device_id)
        if device is None:
            return render(request, "missing.html", {"what": f"device {device_id}"}, 404)
        chosen = request.query_params.get("range", DEFAULT_RANGE)
        if chosen not in RANGES:
            chosen = DEFAULT_RANGE
        until = time.time() + 60  # a sensor's clock a little ahead still shows
        since = until - 60 - RANGES[chosen]
        values: dict[str, Any] = {
            "device": device,
            "flags": flag_switches(device),
            "transitions": await store.transitions(device.id, 50),
            "charts": await self._charts(device, since, until),
            "range": chosen,
            "ranges": list(RANGES),
            "raw": await store.recent_messages(
                device.id, since=device.last_seen - RAW_WINDOW_S, limit=RAW_SHOWN
            ),
            "efento": device.kind == EFENTO_KIND,
            "downlinks": await store.pending_downlinks(device.id),
        }
        return render(request, "device.html", values)

    async def _charts(self, device: Device, since: float, until: float) -> list[dict[str, Any]]:
        store = self.ctx.store
        charts = []
        for quantity in await store.device_quantities(device.id, since, until):
            points = await store.quantity_points(
                device.id, quantity, since, until, limit=CHART_POINTS
            )
            charts.append(quantity_chart(quantity, points))
        return charts
