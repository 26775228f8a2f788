"""GET /live and /live/events: the spy as a page, its stream as Server-Sent Events."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from fieldbridge.topics import check_filter
from fieldbridge.web.console.templating import render
from fieldbridge.web.context import WebContext
from fieldbridge.web.spy import SSE_FRAMING, stream_response

FILTERS = ("source", "device", "topic")


class Live:
    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/live", self.page, methods=["GET"]),
            Route("/live/events", self.events, methods=["GET"]),
        ]

    async def page(self, request: Request) -> Response:
        chosen = {name: request.query_params.get(name, "").strip() for name in FILTERS}
        sources = sorted({s.name for _, s in self.ctx.settings.source_settings})
        return render(request, "live.html", {"filters": chosen, "sources": sources})

    async def events(self, request: Request) -> Response:
        source, device, topic = (request.query_params.get(n, "").strip() or None for n in FILTERS)
        if topic is not None:
            try:
                check_filter(topic)
            except ValueError as exc:
                return Response(f"topic: {exc}", status_code=400, media_type="text/plain")
        hub = self.ctx.spy
        if hub.full:
            # EventSource retries by itself; the page says why it waits.
            message = f"{hub.max_watchers} spies are watching already (spy.max_watchers)"
            return Response(message, status_code=503, headers={"Retry-After": "10"})
        watcher = hub.watch(source, topic, device)
        hello = {"type": "hello", "source": source, "device": device, "topic": topic}
        return stream_response(hub, watcher, hello, SSE_FRAMING)
