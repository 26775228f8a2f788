"""Records every change the console makes in the audit log, after the change."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.requests import Request

from fieldbridge.web.context import WebContext
from fieldbridge.web.security.audit import audit


async def record(
    request: Request,
    ctx: WebContext,
    action: str,
    target: str,
    details: Mapping[str, Any] | None = None,
) -> None:
    """Who did `action` to `target`, now (the security core names the caller)."""
    await audit(request, ctx.store, action, target, details)
