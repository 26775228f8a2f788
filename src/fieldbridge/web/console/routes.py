"""The console's routes, for the app to add: pages, their actions, and /static."""

from __future__ import annotations

from pathlib import Path

from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from fieldbridge.web.console.audit_log import AuditLog
from fieldbridge.web.console.deadletters import DeadLetters
from fieldbridge.web.console.device_flags import DeviceFlags
from fieldbridge.web.console.devices import Devices
from fieldbridge.web.console.efento_form import EfentoForm
from fieldbridge.web.console.live import Live
from fieldbridge.web.console.overview import Overview
from fieldbridge.web.console.quarantine import Quarantine
from fieldbridge.web.console.sinks import Sinks
from fieldbridge.web.context import WebContext

STATIC = Path(__file__).parent.parent / "static"


def console_routes(ctx: WebContext) -> list[BaseRoute]:
    """Every page of the console (GET) and the form posts that change things (POST)."""
    routes: list[BaseRoute] = [Mount("/static", StaticFiles(directory=STATIC), name="static")]
    # Actions under /devices/{id}/... come before the device page, whose id may hold a "/".
    for part in (
        Overview(ctx),
        DeviceFlags(ctx),
        EfentoForm(ctx),
        Devices(ctx),
        Sinks(ctx),
        DeadLetters(ctx),
        Quarantine(ctx),
        Live(ctx),
        AuditLog(ctx),
    ):
        routes += part.routes()
    return routes
