"""GET /sinks and its actions: status and lag, pause/resume, replay from a time with progress."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from fieldbridge.sinks.status import sink_rows
from fieldbridge.timefmt import parse_iso
from fieldbridge.web.console.deadletters import dead_letter_values
from fieldbridge.web.console.guard import refuse_unless_writer
from fieldbridge.web.console.templating import render
from fieldbridge.web.context import WebContext
from fieldbridge.web.security.audit import audit

REFRESH_S = 3


class Sinks:
    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/sinks", self.page, methods=["GET"]),
            Route("/sinks/panel", self.panel, methods=["GET"]),
            Route("/sinks/{name}/pause", self.pause, methods=["POST"]),
            Route("/sinks/{name}/resume", self.resume, methods=["POST"]),
            Route("/sinks/replay", self.replay, methods=["POST"]),
            Route("/sinks/{name}/replay", self.progress, methods=["GET"]),
        ]

    def _known(self, name: str) -> bool:
        return any(s.name == name for _, s in self.ctx.settings.sink_settings)

    async def _values(self) -> dict[str, Any]:
        return {
            "sinks": await sink_rows(self.ctx.settings.sink_settings, self.ctx.store),
            "refresh_s": REFRESH_S,
            **await dead_letter_values(self.ctx.store),
        }

    async def page(self, request: Request) -> Response:
        return render(request, "sinks.html", await self._values())

    async def panel(self, request: Request) -> Response:
        return render(request, "sinks_panel.html", await self._values())

    async def pause(self, request: Request) -> Response:
        return await self._set_paused(request, True)

    async def resume(self, request: Request) -> Response:
        return await self._set_paused(request, False)

    async def _set_paused(self, request: Request, paused: bool) -> Response:
        refusal = refuse_unless_writer(request)
        if refusal is not None:
            return refusal
        name = request.path_params["name"]
        if not self._known(name):
            return render(request, "notice.html", {"error": f"no sink named {name}"}, 404)
        await self.ctx.store.set_paused(name, paused)
        await audit(request, self.ctx.store, "sink.pause" if paused else "sink.resume", name)
        return await self.panel(request)

    async def replay(self, request: Request) -> Response:
        refusal = refuse_unless_writer(request)
        if refusal is not None:
            return refusal
        form = await request.form()
        name = str(form.get("sink", ""))
        if not self._known(name):
            return render(request, "notice.html", {"error": f"no sink named {name!r}"}, 404)
        text = str(form.get("since", "")).strip()
        try:
            since = parse_iso(text)
        except ValueError:
            error = f"{text!r} is not a time; e.g. 2026-11-23T08:00 (UTC)"
            return render(request, "notice.html", {"error": error}, 422)
        replay = await self.ctx.store.replay(name, since=since)
        details = {"since": text, "from_id": replay.from_id, "messages": replay.messages}
        await audit(request, self.ctx.store, "sink.replay", name, details)
        return await self._progress(request, name, replay.from_id - 1, replay.head_id)

    async def progress(self, request: Request) -> Response:
        name = request.path_params["name"]
        try:
            start = int(request.query_params["start"])
            head = int(request.query_params["head"])
        except (KeyError, ValueError):
            return render(request, "notice.html", {"error": "give start=ID&head=ID"}, 400)
        return await self._progress(request, name, start, head)

    async def _progress(self, request: Request, name: str, start: int, head: int) -> Response:
        """How far a replay got: the cursor between `start` and the head it was asked at."""
        state = await self.ctx.store.sink_state(name)
        waiting = state.replay_from is not None  # the running sink has not taken it yet
        cursor = start if waiting else state.cursor
        total = max(head - start, 0)
        done = max(0, min(cursor, head) - start)
        values = {
            "name": name,
            "start": start,
            "head": head,
            "done": done,
            "total": total,
            "waiting": waiting,
            "finished": not waiting and cursor >= head,
            "paused": state.paused,
        }
        return render(request, "replay.html", values)
