"""GET /audit: who changed what and when, for admins."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from fieldbridge.web.console.guard import refuse_unless_admin
from fieldbridge.web.console.templating import render
from fieldbridge.web.context import WebContext

PAGE = 100


class AuditLog:
    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx

    def routes(self) -> list[BaseRoute]:
        return [Route("/audit", self.page, methods=["GET"])]

    async def page(self, request: Request) -> Response:
        refusal = refuse_unless_admin(request)
        if refusal is not None:
            return render(request, "missing.html", {"what": "the audit log (admins only)"}, 403)
        params = request.query_params
        actor = params.get("actor", "").strip() or None
        action = params.get("action", "").strip() or None
        try:
            before = int(params["before"]) if params.get("before") else None
        except ValueError:
            before = None
        entries = await self.ctx.store.list_audit(PAGE, before, actor=actor, action=action)
        older = entries[-1].id if len(entries) == PAGE else None
        values = {"entries": entries, "actor": actor or "", "action": action or "", "older": older}
        return render(request, "audit.html", values)
