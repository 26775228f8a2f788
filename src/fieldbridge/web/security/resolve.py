"""Who a request comes from: its session cookie or its bearer token."""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from http.cookies import CookieError, SimpleCookie

from fieldbridge.store import Store
from fieldbridge.web.security.principal import Principal, Role, Scope
from fieldbridge.web.security.tokens import digest

SESSION_COOKIE = "fieldbridge_session"
MAX_CREDENTIAL = 512  # characters: anything longer is no token of ours


def cookie_value(headers: Sequence[tuple[bytes, bytes]], name: str) -> str | None:
    for key, value in headers:
        if key == b"cookie":
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(value.decode("latin-1"))
            except CookieError:
                continue
            if name in jar:
                return jar[name].value
    return None


def bearer(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    for key, value in headers:
        if key == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class Resolver:
    """Sessions and API tokens from the store; `legacy` are http.tokens, read-only here."""

    def __init__(self, store: Store, legacy: Sequence[str] = ()) -> None:
        self._store = store
        self._legacy = [t.encode() for t in legacy]

    async def from_session(self, session_id: str) -> Principal | None:
        if len(session_id) > MAX_CREDENTIAL:
            return None
        found = await self._store.session(digest(session_id))
        if found is None:
            return None
        return Principal(
            name=found.username,
            via="session",
            role=Role(found.role),
            csrf_token=found.csrf_token,
        )

    async def from_token(self, token: str) -> Principal | None:
        if len(token) > MAX_CREDENTIAL:
            return None
        if any(hmac.compare_digest(token.encode(), t) for t in self._legacy):
            return Principal(name="http.tokens", via="token", scope=Scope.READ)
        found = await self._store.api_token_by_hash(digest(token))
        if found is None:
            return None
        return Principal(name=found.name, via="token", scope=Scope(found.scope))
