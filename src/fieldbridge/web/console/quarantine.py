"""GET /quarantine: payloads that did not decode, with the reason and the raw bytes."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from fieldbridge.web.console.templating import render
from fieldbridge.web.context import WebContext

SHOWN = 100


class Quarantine:
    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx

    def routes(self) -> list[BaseRoute]:
        return [Route("/quarantine", self.page, methods=["GET"])]

    async def page(self, request: Request) -> Response:
        source = request.query_params.get("source", "").strip() or None
        entries = await self.ctx.store.list_quarantine(source=source, limit=SHOWN)
        total = await self.ctx.store.count_quarantine()
        values = {
            "entries": entries,
            "source": source or "",
            "total": total,
            "shown": SHOWN,
            "actions": False,
        }
        return render(request, "quarantine.html", values)
