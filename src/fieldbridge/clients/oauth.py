"""OAuth 2 bearer tokens for httpx clients: got, refreshed ahead of expiry, kept, backed off."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
import warnings
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol
from urllib.parse import parse_qsl

import httpx
import orjson
from pydantic import SecretStr

from fieldbridge.errors import AuthError, IncompatibleDependency, StoreError
from fieldbridge.model import StoredToken

with warnings.catch_warnings():
    # Authlib prefers the httpx2 package and warns when it uses httpx instead; httpx is the
    # client fieldbridge is built on, so that is the one we want it to use.
    from authlib.deprecate import AuthlibDeprecationWarning

    warnings.simplefilter("ignore", AuthlibDeprecationWarning)
    from authlib.integrations.base_client import OAuthError
    from authlib.integrations.httpx_client import AsyncOAuth2Client

log = logging.getLogger("fieldbridge.oauth")

FIRST_BACKOFF = 1.0  # seconds before the second try after a failure; doubles up to max_backoff
STILL_VALID = 2.0  # seconds a kept access token must still have to be used after a failure


class Grant(StrEnum):
    """How tokens are got: as a user (Trap.NZ), or as the client itself (Auth0 M2M)."""

    PASSWORD = "password"
    CLIENT_CREDENTIALS = "client_credentials"


@dataclass(frozen=True)
class OAuthClient:
    """Where tokens come from and who asks: the settings of one token endpoint."""

    token_url: str
    client_id: str
    client_secret: SecretStr
    grant: Grant
    username: str | None = None
    password: SecretStr | None = None
    audience: str | None = None  # Auth0: the API the token is for
    json_request: bool = False  # Auth0: the token request is a JSON body, not a form
    refresh_margin: float = 60.0  # seconds before expiry a token is renewed (seed 000: 60)
    timeout: float = 10.0  # seconds for each token request's connect, read and write
    verify_tls: bool = True
    max_backoff: float = 300.0  # seconds, the longest wait between failed tries

    def __post_init__(self) -> None:
        if self.grant is Grant.PASSWORD and (not self.username or self.password is None):
            raise ValueError("the password grant needs a username and a password")

    def fingerprint(self) -> str:
        """Names the endpoint, client and user (no secrets): a kept token issued for other
        settings is not used."""
        parts = (self.token_url, self.client_id, self.grant, self.username, self.audience)
        return hashlib.sha256("\x00".join(str(p) for p in parts).encode()).hexdigest()[:32]


class TokenKeeper(Protocol):
    """Where tokens are kept between runs (the store has these)."""

    async def load_token(self, key: str) -> StoredToken | None: ...

    async def save_token(self, key: str, token: StoredToken) -> None: ...

    async def note_token_failure(self, key: str, failures: int, error: str) -> None: ...


@dataclass(frozen=True, slots=True)
class _Token:
    access: str
    refresh: str | None
    token_type: str
    expires_at: float | None  # Unix seconds; None: no lifetime given, used until a 401
    renew_at: float | None  # Unix seconds from which it is renewed ahead of expiry

    def usable(self, now: float) -> bool:
        return self.expires_at is None or self.expires_at - STILL_VALID > now


@dataclass(frozen=True, slots=True)
class TokenStatus:
    """How getting tokens goes, for health: no token values."""

    has_token: bool
    expires_at: float | None
    failures: int  # in a row
    last_error: str | None
    retry_in: float | None  # seconds until the next try is allowed, while backing off

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": "failing" if self.failures else "ok" if self.has_token else "no token yet",
            "expires_at": self.expires_at,
            "failures": self.failures,
            "last_error": self.last_error,
            "retry_in": None if self.retry_in is None else round(self.retry_in, 1),
        }


def _json_client_auth(
    client: Any, method: str, uri: str, headers: Any, body: bytes | str
) -> tuple[str, Any, bytes]:
    """Authlib client-auth method "client_secret_json": the token request as one JSON object
    with the client's id and secret (Auth0's documented form), in the seed's key order."""
    text = body.decode() if isinstance(body, bytes) else body or ""
    fields = dict(parse_qsl(text, keep_blank_values=True))
    grant_type = fields.pop("grant_type", "")
    payload = {
        "client_id": client.client_id,
        "client_secret": client.client_secret,
        **fields,
        "grant_type": grant_type,
    }
    headers["Content-Type"] = "application/json"
    return uri, headers, orjson.dumps(payload)


class OAuthBearer(httpx.Auth):
    """An httpx auth object that signs requests with a bearer token it gets and renews.

    - A token is renewed `refresh_margin` seconds before it expires (by the server's
      `expires_in`), or halfway through its life if that is shorter; concurrent requests
      share one renewal (single-flight).
    - A 401 answer renews the token once and sends the request once more.
    - Renewal uses the refresh token (the new refresh token replaces the old, rotation);
      one the endpoint refuses falls back to the password grant.
    - With a `keeper`, tokens are kept under `key` and read back on the first request, so a
      restart needs no new grant; failures are noted there too.
    - A failed try is not repeated for a back-off (1 s doubling up to max_backoff, jittered):
      meanwhile requests raise AuthError with `retry_after`, unless the old token is still
      valid, which is then used.

    Async clients only. Token values and credentials are never logged.
    """

    requires_request_body = True

    def __init__(
        self,
        client: OAuthClient,
        *,
        name: str,
        keeper: TokenKeeper | None = None,
        key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`name` says whose token it is in messages ("sink trapnz"); `transport` replaces
        the network transport of the token requests (httpx's seam)."""
        if not issubclass(AsyncOAuth2Client, httpx.AsyncClient):
            raise IncompatibleDependency(
                "Authlib's httpx client is built on the httpx2 package here, not on httpx; "
                "uninstall httpx2 or pin authlib to a release that uses httpx"
            )
        self.client = client
        self.name = name
        self._keeper = keeper
        self._key = key or name
        self._transport = transport
        self._oauth: Any = None  # AsyncOAuth2Client, made on first use
        self._lock = asyncio.Lock()
        self._token: _Token | None = None
        self._loaded = keeper is None
        self._failures = 0
        self._last_error: str | None = None
        self._last_refusal: AuthError | None = None
        self._retry_at = 0.0  # time.monotonic() before which no new try is made
        self.grants: dict[str, int] = {}  # token requests made, by grant type

    # --- httpx.Auth -------------------------------------------------------------------------

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        raise TypeError(f"{self.name}: OAuthBearer signs requests of httpx.AsyncClient only")

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self.token()
        request.headers["Authorization"] = f"Bearer {token.access}"
        response = yield request
        if response.status_code != 401:
            return
        log.info("%s: the access token was refused (401); renewing it, trying once more", self.name)
        token = await self.token(stale=token.access)
        request.headers["Authorization"] = f"Bearer {token.access}"
        yield request

    # --- tokens -----------------------------------------------------------------------------

    async def token(self, *, stale: str | None = None) -> _Token:
        """A token to sign with: the current one unless it is due for renewal or is `stale`
        (refused by the API); AuthError if none can be had now."""
        token = self._token
        if token is not None and token.access != stale and not self._due(token):
            return token
        async with self._lock:  # one renewal at a time; those who waited use its result
            if not self._loaded:
                await self._load()
            token = self._token
            if token is not None and token.access != stale and not self._due(token):
                return token
            return await self._renew(token, stale)

    def expire(self) -> None:
        """Renew the token before the next request: the API refused what the token grants
        (e.g. its permissions were changed since it was issued)."""
        token = self._token
        if token is not None:
            self._token = _Token(
                token.access, token.refresh, token.token_type, token.expires_at, time.time()
            )

    def status(self) -> TokenStatus:
        retry_in = self._retry_at - time.monotonic()
        return TokenStatus(
            has_token=self._token is not None,
            expires_at=None if self._token is None else self._token.expires_at,
            failures=self._failures,
            last_error=self._last_error,
            retry_in=retry_in if self._failures and retry_in > 0 else None,
        )

    async def aclose(self) -> None:
        if self._oauth is not None:
            await self._oauth.aclose()
            self._oauth = None

    def _due(self, token: _Token) -> bool:
        return token.renew_at is not None and time.time() >= token.renew_at

    async def _renew(self, old: _Token | None, stale: str | None) -> _Token:
        now = time.time()
        keep_old = old is not None and old.access != stale and old.usable(now)
        left = self._retry_at - time.monotonic()
        if left > 0:
            if keep_old and old is not None:
                return old
            raise AuthError(
                f"{self.name}: no token ({self._last_error}); next try in {left:.1f} s",
                status=None if self._last_refusal is None else self._last_refusal.status,
                refused=self._last_refusal is not None,
                retry_after=left,
            )
        try:
            token = await self._grant(old)
        except AuthError as exc:
            self._failures += 1
            self._last_error = str(exc)
            self._last_refusal = exc if exc.refused else None
            cap = min(self.client.max_backoff, FIRST_BACKOFF * 2 ** min(self._failures - 1, 30))
            delay = random.uniform(cap / 2, cap)
            self._retry_at = time.monotonic() + delay
            log.warning(
                "%s: %s (%d failure%s in a row); next try in %.1f s%s",
                self.name,
                exc,
                self._failures,
                "" if self._failures == 1 else "s",
                delay,
                "; the current token is used until it expires" if keep_old else "",
            )
            await self._note_failure(str(exc))
            if keep_old and old is not None:
                return old
            raise AuthError(
                f"{self.name}: {exc}",
                status=exc.status,
                refused=exc.refused,
                retry_after=delay,
            ) from exc
        if self._failures:
            log.info("%s: got a token again after %d failures", self.name, self._failures)
        self._failures, self._last_error, self._last_refusal = 0, None, None
        self._token = token
        await self._keep(token)
        return token

    async def _grant(self, old: _Token | None) -> _Token:
        client = self.client
        if client.grant is Grant.CLIENT_CREDENTIALS:
            extra = {"audience": client.audience} if client.audience else {}
            return await self._request("client_credentials", extra)
        if old is not None and old.refresh:
            try:
                return await self._request("refresh_token", {"refresh_token": old.refresh})
            except AuthError as exc:
                if not exc.refused:
                    raise
                log.info(
                    "%s: the refresh token was refused (%s); using the password grant",
                    self.name,
                    exc,
                )
        assert client.username is not None and client.password is not None
        return await self._request(
            "password",
            {"username": client.username, "password": client.password.get_secret_value()},
        )

    async def _request(self, grant_type: str, fields: Mapping[str, str]) -> _Token:
        """One call to the token endpoint through Authlib; AuthError unless it gave a token."""
        oauth = self._oauth_client()
        url = self.client.token_url
        self.grants[grant_type] = self.grants.get(grant_type, 0) + 1
        sent = time.time()
        try:
            if grant_type == "refresh_token":
                raw = await oauth.refresh_token(url, refresh_token=fields["refresh_token"])
            else:
                raw = await oauth.fetch_token(url, grant_type=grant_type, **fields)
        except AuthError:
            raise
        except OAuthError as exc:  # a 2xx answer holding {"error": ...}
            raise AuthError(
                f"token endpoint {url} refused the {grant_type} grant: {exc.error}",
                refused=True,
            ) from None
        except httpx.TimeoutException as exc:
            raise AuthError(
                f"token endpoint {url} did not answer within {self.client.timeout:g} s "
                f"({type(exc).__name__})"
            ) from None
        except httpx.TransportError as exc:
            raise AuthError(
                f"token endpoint {url} unreachable: {type(exc).__name__}: {exc}"
            ) from None
        except ValueError:
            raise AuthError(f"token endpoint {url} answered with no JSON object") from None
        return self._parsed(dict(raw), sent, grant_type, fields.get("refresh_token"))

    def _parsed(
        self, raw: dict[str, Any], sent: float, grant_type: str, old_refresh: str | None
    ) -> _Token:
        url = self.client.token_url
        access = raw.get("access_token")
        if not isinstance(access, str) or not access:
            raise AuthError(
                f"token endpoint {url} answered the {grant_type} grant without an access_token"
            )
        refresh = raw.get("refresh_token")
        if not isinstance(refresh, str) or not refresh:
            refresh = old_refresh  # not rotated: the old one stays good
        token_type = raw.get("token_type")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise AuthError(
                f"token endpoint {url} gave a token of type {str(token_type)[:40]!r}; "
                "only Bearer tokens are supported"
            )
        lifetime = raw.get("expires_in")
        if lifetime is not None:
            try:
                lifetime = float(lifetime)
            except (TypeError, ValueError):
                raise AuthError(f"token endpoint {url}: expires_in is not a number") from None
        return _token(access, refresh, token_type, sent, lifetime, self.client.refresh_margin)

    def _oauth_client(self) -> Any:
        if self._oauth is None:
            client = self.client
            method = "client_secret_json" if client.json_request else "client_secret_post"
            transport = self._transport or httpx.AsyncHTTPTransport(verify=client.verify_tls)
            oauth = AsyncOAuth2Client(
                client_id=client.client_id,
                client_secret=client.client_secret.get_secret_value(),
                token_endpoint_auth_method=method,
                timeout=client.timeout,
                transport=transport,
            )
            oauth.register_client_auth_method(("client_secret_json", _json_client_auth))
            check = _answer_check(client.token_url)
            oauth.register_compliance_hook("access_token_response", check)
            oauth.register_compliance_hook("refresh_token_response", check)
            self._oauth = oauth
        return self._oauth

    # --- keeping ----------------------------------------------------------------------------

    async def _load(self) -> None:
        self._loaded = True
        if self._keeper is None:
            return
        try:
            kept = await self._keeper.load_token(self._key)
        except StoreError as exc:
            log.warning("%s: could not read the kept token (%s); getting a new one", self.name, exc)
            return
        if kept is None or kept.fingerprint != self.client.fingerprint():
            return
        lifetime = None if kept.expires_at is None else kept.expires_at - kept.updated_at
        token = _token(
            kept.access_token,
            kept.refresh_token,
            kept.token_type,
            kept.updated_at,
            lifetime,
            self.client.refresh_margin,
        )
        if token.usable(time.time()) or token.refresh:
            self._token = token
            log.info("%s: using the token kept in the store", self.name)

    async def _keep(self, token: _Token) -> None:
        if self._keeper is None:
            return
        kept = StoredToken(
            fingerprint=self.client.fingerprint(),
            access_token=token.access,
            refresh_token=token.refresh,
            token_type=token.token_type,
            expires_at=token.expires_at,
            updated_at=time.time(),
        )
        try:
            await self._keeper.save_token(self._key, kept)
        except StoreError as exc:  # the token works; a restart would need a new grant
            log.warning("%s: could not keep the new token in the store: %s", self.name, exc)

    async def _note_failure(self, error: str) -> None:
        if self._keeper is None:
            return
        try:
            await self._keeper.note_token_failure(self._key, self._failures, error)
        except StoreError as exc:
            log.warning("%s: could not note the token failure in the store: %s", self.name, exc)


def _token(
    access: str,
    refresh: str | None,
    token_type: str,
    issued: float,
    lifetime: float | None,
    margin: float,
) -> _Token:
    if lifetime is None:
        return _Token(access, refresh, token_type, None, None)
    expires_at = issued + lifetime
    return _Token(access, refresh, token_type, expires_at, expires_at - min(margin, lifetime / 2))


def _answer_check(url: str) -> Callable[[httpx.Response], httpx.Response]:
    """An Authlib compliance hook: a token answer that is not 2xx raises AuthError with the
    status and the OAuth error code (the body may echo what was sent: never quoted whole)."""

    def check(response: httpx.Response) -> httpx.Response:
        status = response.status_code
        if 200 <= status < 300:
            return response
        detail = ""
        try:
            data = response.json()
        except ValueError:
            data = None
        if isinstance(data, dict):
            detail = ": ".join(
                str(data[k])[:200] for k in ("error", "error_description") if k in data
            )
        refused = 400 <= status < 500 and status not in (408, 425, 429)
        raise AuthError(
            f"token endpoint {url} answered HTTP {status}" + (f" ({detail})" if detail else ""),
            status=status,
            refused=refused,
        )

    return check
