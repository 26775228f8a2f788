"""GET /quarantine and its actions: payloads that did not decode; re-ingest or drop one."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from fieldbridge.reingest import CannotReingest, reingest
from fieldbridge.web.console.guard import refuse_unless_writer
from fieldbridge.web.console.templating import render
from fieldbridge.web.context import WebContext
from fieldbridge.web.security.audit import audit

SHOWN = 100


class Quarantine:
    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/quarantine", self.page, methods=["GET"]),
            Route("/quarantine/{qid:int}/reingest", self.reingest, methods=["POST"]),
            Route("/quarantine/{qid:int}/drop", self.drop, methods=["POST"]),
        ]

    async def page(self, request: Request) -> Response:
        source = request.query_params.get("source", "").strip() or None
        entries = await self.ctx.store.list_quarantine(source=source, limit=SHOWN)
        total = await self.ctx.store.count_quarantine()
        values = {"entries": entries, "source": source or "", "total": total, "shown": SHOWN}
        return render(request, "quarantine.html", values)

    async def reingest(self, request: Request) -> Response:
        """Decode it again with its source's codec as it is now; stored, it leaves."""
        refusal = refuse_unless_writer(request)
        if refusal is not None:
            return refusal
        qid: int = request.path_params["qid"]
        ctx = self.ctx
        try:
            done = await reingest(ctx.store, ctx.ingest, ctx.settings.source_settings, qid)
        except CannotReingest as exc:
            return await self._entry(request, qid, error=exc.message)
        details: dict[str, Any] = {"source": done.source, "message_ids": list(done.message_ids)}
        if done.quarantined:
            details["quarantined"] = list(done.quarantined)
        await audit(request, ctx.store, "quarantine.reingest", str(qid), details)
        ids = ", ".join(f"#{i}" for i in done.message_ids) or "none (all duplicates)"
        note = f"payload {qid} re-ingested: stored as messages {ids}"
        if done.quarantined:
            note += f"; parts still refused are quarantine {done.quarantined}"
        return render(request, "notice.html", {"note": note})

    async def drop(self, request: Request) -> Response:
        refusal = refuse_unless_writer(request)
        if refusal is not None:
            return refusal
        qid: int = request.path_params["qid"]
        if not await self.ctx.store.drop_quarantined(qid):
            return render(request, "notice.html", {"error": f"no quarantined payload {qid}"}, 404)
        await audit(request, self.ctx.store, "quarantine.drop", str(qid))
        return render(request, "notice.html", {"note": f"payload {qid} dropped"})

    async def _entry(self, request: Request, qid: int, *, error: str) -> Response:
        """The entry again with why it stayed (or only why, when it is gone)."""
        entry = await self.ctx.store.get_quarantined(qid)
        if entry is None:
            return render(request, "notice.html", {"error": error}, 404)
        return render(request, "quarantine_entry.html", {"q": entry, "error": error}, 422)
