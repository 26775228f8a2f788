"""Who may change what: writers change things, admins read the audit log."""

from __future__ import annotations

from html import escape

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from fieldbridge.web.security.principal import principal_of


def refuse_unless_writer(request: Request) -> Response | None:
    """A 403 for a caller who may only look; None for one who may change things."""
    me = principal_of(request)
    if me.can_write:
        return None
    return _forbidden(f"{me.name} may look but not change anything (role viewer or read token)")


def refuse_unless_admin(request: Request) -> Response | None:
    """A 403 for anyone but an admin logged in as themselves."""
    me = principal_of(request)
    if me.is_admin:
        return None
    return _forbidden(f"{me.name} is not an admin; only admins see this")


def _forbidden(message: str) -> Response:
    # A fragment: htmx shows it in the page's notice area (see static/console.js).
    return HTMLResponse(f'<p class="notice error">{escape(message)}</p>', status_code=403)
