"""/login and /logout: the browser's way in and out (a session cookie)."""

from __future__ import annotations

import hmac
import logging
import time
from pathlib import Path
from urllib.parse import parse_qs

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from fieldbridge.config import HttpSettings
from fieldbridge.errors import StoreError
from fieldbridge.store import Store
from fieldbridge.web.security.audit import record
from fieldbridge.web.security.middleware import read_body
from fieldbridge.web.security.passwords import (
    MAX_LENGTH,
    hash_password_async,
    verify_password_async,
)
from fieldbridge.web.security.principal import principal_of
from fieldbridge.web.security.ratelimit import LoginLimiter
from fieldbridge.web.security.resolve import SESSION_COOKIE, cookie_value
from fieldbridge.web.security.tokens import digest, mint_secret

log = logging.getLogger("fieldbridge.web.security")

LOGIN_CSRF_COOKIE = "fieldbridge_login_csrf"
MAX_LOGIN_BYTES = 8192
MAX_NAME = 64
_templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
)
_dummy_hash: list[str] = []  # a real hash to check unknown names against: they take as long


async def _dummy() -> str:
    if not _dummy_hash:
        _dummy_hash.append(await hash_password_async(mint_secret()))
    return _dummy_hash[0]


def safe_next(target: str | None) -> str:
    """Only a path of this server: never another host (//evil, https://evil)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


class LoginRoutes:
    def __init__(self, store: Store, http: HttpSettings) -> None:
        self.store = store
        self.http = http
        self.limiter = LoginLimiter(http.login_max_failures, http.login_window_s)

    def routes(self) -> list[Route]:
        return [
            Route("/login", self.form, methods=["GET"]),
            Route("/login", self.submit, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/api/v1/session", self.whoami, methods=["GET"]),
        ]

    def _page(
        self, next_path: str, *, error: str = "", username: str = "", status: int = 200
    ) -> Response:
        csrf = mint_secret()
        html = _templates.get_template("login.html").render(
            csrf_token=csrf, next=next_path, error=error, username=username
        )
        response = HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})
        response.set_cookie(
            LOGIN_CSRF_COOKIE,
            csrf,
            max_age=3600,
            httponly=True,
            samesite="strict",
            secure=self.http.cookies_secure,
            path="/login",
        )
        return response

    async def form(self, request: Request) -> Response:
        return self._page(safe_next(request.query_params.get("next")))

    async def submit(self, request: Request) -> Response:
        body = await read_body(request.receive, MAX_LOGIN_BYTES)
        if body is None:
            return JSONResponse(
                {"error": {"code": "too_large", "message": "form too large", "details": {}}},
                status_code=413,
            )
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        next_path = safe_next(form.get("next"))
        username = form.get("username", "").strip()[:MAX_NAME]
        password = form.get("password", "")[: MAX_LENGTH + 1]
        expected = cookie_value(request.scope["headers"], LOGIN_CSRF_COOKIE) or ""
        if not expected or not hmac.compare_digest(form.get("csrf_token", ""), expected):
            return self._page(
                next_path,
                error="The login form expired; please try again.",
                username=username,
                status=403,
            )
        host = request.client.host if request.client else "unknown"
        keys = [f"user:{username}", f"addr:{host}"]
        wait = self.limiter.retry_after(keys)
        if wait > 0:
            response = self._page(
                next_path,
                error=f"Too many failed logins; try again in {int(wait) + 1} s.",
                username=username,
                status=429,
            )
            response.headers["Retry-After"] = str(int(wait) + 1)
            return response
        try:
            stored = await self.store.password_hash(username) if username else None
            ok = await verify_password_async(stored or await _dummy(), password) and bool(stored)
            if not ok:
                self.limiter.failed(keys)
                log.warning("failed login for %r from %s", username, host)
                return self._page(
                    next_path,
                    error="Wrong user name or password.",
                    username=username,
                    status=401,
                )
            self.limiter.succeeded(keys)
            session_id, csrf = mint_secret(), mint_secret()
            expires = time.time() + self.http.session_max_age_s
            await self.store.open_session(digest(session_id), username, csrf, expires)
        except StoreError as exc:
            log.warning("login unavailable: %s", exc)
            return self._page(
                next_path, error="The store does not answer; try again soon.", status=503
            )
        await record(self.store, username, "user.login", username, {"address": host})
        response = RedirectResponse(next_path, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            session_id,
            max_age=self.http.session_max_age_s,
            httponly=True,
            samesite="lax",
            secure=self.http.cookies_secure,
            path="/",
        )
        response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
        return response

    async def whoami(self, request: Request) -> Response:
        """Who is asking; for a session also its CSRF token, for scripts that log in."""
        me = principal_of(request)
        return JSONResponse(
            {
                "name": me.name,
                "via": me.via,
                "role": None if me.role is None else str(me.role),
                "scope": None if me.scope is None else str(me.scope),
                "can_write": me.can_write,
                "is_admin": me.is_admin,
                "csrf_token": me.csrf_token,
            },
            headers={"Cache-Control": "no-store"},
        )

    async def logout(self, request: Request) -> Response:
        """Ends the session; needs its CSRF token, so another site cannot log a user out."""
        session_id = cookie_value(request.scope["headers"], SESSION_COOKIE)
        if session_id is not None:
            session = await self.store.session(digest(session_id))
            if session is not None:
                body = await read_body(request.receive, MAX_LOGIN_BYTES) or b""
                sent = parse_qs(body.decode("latin-1")).get("csrf_token", [""])[0]
                sent = request.headers.get("x-csrf-token", sent)
                if not hmac.compare_digest(sent, session.csrf_token):
                    return JSONResponse(
                        {
                            "error": {
                                "code": "csrf_failed",
                                "message": "missing or wrong CSRF token",
                                "details": {},
                            }
                        },
                        status_code=403,
                    )
                await self.store.close_session(digest(session_id))
                await record(self.store, session.username, "user.logout", session.username)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response
