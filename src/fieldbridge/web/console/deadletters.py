"""POST /deadletters/{id}/retry|drop: send a refused message again, or forget it."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from fieldbridge.model import DeadLetterState
from fieldbridge.store import Store
from fieldbridge.web.console.guard import refuse_unless_writer
from fieldbridge.web.console.templating import render
from fieldbridge.web.context import WebContext
from fieldbridge.web.security.audit import audit

SHOWN = 200


async def dead_letter_values(store: Store) -> dict[str, Any]:
    """What the dead letters table shows."""
    return {"dead": await store.list_dead_letters(limit=SHOWN), "retrying": DeadLetterState.RETRY}


class DeadLetters:
    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/deadletters/{dead_id:int}/retry", self.retry, methods=["POST"]),
            Route("/deadletters/{dead_id:int}/drop", self.drop, methods=["POST"]),
        ]

    async def retry(self, request: Request) -> Response:
        refusal = refuse_unless_writer(request)
        if refusal is not None:
            return refusal
        dead_id: int = request.path_params["dead_id"]
        count = await self.ctx.store.mark_dead_letters(state=DeadLetterState.RETRY, ids=[dead_id])
        if not count:
            return await self._table(request, error=f"no dead letter {dead_id}", status_code=404)
        await audit(request, self.ctx.store, "deadletter.retry", str(dead_id))
        return await self._table(
            request, note=f"dead letter {dead_id} will be sent again by the running sink"
        )

    async def drop(self, request: Request) -> Response:
        refusal = refuse_unless_writer(request)
        if refusal is not None:
            return refusal
        dead_id: int = request.path_params["dead_id"]
        count = await self.ctx.store.drop_dead_letters(ids=[dead_id])
        if not count:
            return await self._table(request, error=f"no dead letter {dead_id}", status_code=404)
        await audit(request, self.ctx.store, "deadletter.drop", str(dead_id))
        return await self._table(request, note=f"dead letter {dead_id} dropped")

    async def _table(
        self,
        request: Request,
        *,
        note: str | None = None,
        error: str | None = None,
        status_code: int = 200,
    ) -> Response:
        values = {**await dead_letter_values(self.ctx.store), "note": note, "error": error}
        return render(request, "dead_letters.html", values, status_code)
