"""What every route takes: the service's parts, the caller and its rights, the audit log."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from fieldbridge.web.api.errors import ApiError
from fieldbridge.web.context import WebContext
from fieldbridge.web.security.principal import Principal, principal_of

CONTEXT_KEY = "fieldbridge_context"


def context(request: Request) -> WebContext:
    found: WebContext = getattr(request.app.state, CONTEXT_KEY)
    return found


def caller(request: Request) -> Principal:
    return principal_of(request)


def writer(request: Request) -> Principal:
    """The caller, if it may change things: an admin, or a write-scoped token."""
    principal = principal_of(request)
    if not principal.can_write:
        raise ApiError(
            403,
            "forbidden",
            f"{principal.actor} may only look: changes need an admin login or a token with "
            "scope write",
        )
    return principal


def admin(request: Request) -> Principal:
    """The caller, if it is an admin logged in as themselves (users, tokens, the audit log)."""
    principal = principal_of(request)
    if not principal.is_admin:
        raise ApiError(403, "forbidden", "users, tokens and the audit log are for admins only")
    return principal


Context = Annotated[WebContext, Depends(context)]
Caller = Annotated[Principal, Depends(caller)]
Writer = Annotated[Principal, Depends(writer)]
Admin = Annotated[Principal, Depends(admin)]
