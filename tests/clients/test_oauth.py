"""The OAuth token manager against the fake Trap.NZ: grants, renewal, rotation, back-off, logs."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from pydantic import SecretStr

from fieldbridge.clients.oauth import Grant, OAuthBearer, OAuthClient
from fieldbridge.errors import AuthError
from fieldbridge.store import Store
from tests.conftest import eventually
from tests.fakes.trapnz import Credentials, TrapNZServer

CREDS = Credentials()
KEY = "sink:trapnz"


def oauth_client(trapnz: TrapNZServer, **overrides: Any) -> OAuthClient:
    values: dict[str, Any] = {
        "token_url": trapnz.token_url,
        "client_id": CREDS.client_id,
        "client_secret": SecretStr(CREDS.client_secret),
        "grant": Grant.PASSWORD,
        "username": CREDS.username,
        "password": SecretStr(CREDS.password),
        "timeout": 2.0,
    }
    values.update(overrides)
    return OAuthClient(**values)


def record(dev_id: str = "Trap1") -> dict[str, Any]:
    return {
        "dev_id": dev_id,
        "metadata": {"time": "2026-12-01T10:00:00+00:00"},
        "payload_fields": {"type": "sensor_report", "field_event": [{"value": "Heartbeat"}]},
    }


async def post(client: httpx.AsyncClient, url: str, dev_id: str = "Trap1") -> httpx.Response:
    return await client.post(
        url,
        content=orjson.dumps(record(dev_id)),
        headers={"Content-Type": "application/hal+json", "Accept": "application/hal+json"},
    )


@pytest.fixture
async def trapnz() -> AsyncIterator[TrapNZServer]:
    async with TrapNZServer(expires_in=4) as server:
        yield server
    assert server.violations == [], "the token manager broke the Trap.NZ contract"


async def renewal_due(bearer: OAuthBearer) -> None:
    """Wait (polling, with a deadline) until the current token is due for renewal."""
    token = await bearer.token()
    assert token.renew_at is not None

    await eventually(lambda: time.time() >= token.renew_at, "the token due for renewal")  # type: ignore[operator]


async def test_a_password_grant_signs_requests_and_the_token_is_kept(
    trapnz: TrapNZServer, store: Store
) -> None:
    bearer = OAuthBearer(oauth_client(trapnz), name="sink trapnz", keeper=store, key=KEY)
    async with httpx.AsyncClient(auth=bearer, timeout=5) as client:
        response = await post(client, trapnz.record_url)
    assert response.status_code == 201
    assert trapnz.grants("password") == 1
    kept = await store.load_token(KEY)
    assert kept is not None
    assert kept.access_token in trapnz.access_tokens and len(kept.access_token) == 1200
    assert kept.refresh_token in trapnz.refresh_tokens
    assert kept.expires_at is not None and 3 < kept.expires_at - kept.updated_at <= 4.5
    assert "access_token" not in repr(kept) and kept.access_token not in repr(kept)
    await bearer.aclose()


async def test_100_concurrent_requests_share_one_refresh(trapnz: TrapNZServer) -> None:
    bearer = OAuthBearer(oauth_client(trapnz), name="sink trapnz")
    async with httpx.AsyncClient(
        auth=bearer, timeout=10, limits=httpx.Limits(max_connections=20)
    ) as client:
        await renewal_due(bearer)
        answers = await asyncio.gather(
            *(post(client, trapnz.record_url, f"Trap{n}") for n in range(100))
        )
    assert [a.status_code for a in answers] == [201] * 100
    assert trapnz.grants("password") == 1
    assert trapnz.grants("refresh_token") == 1, "one refresh for all 100 requests"
    assert trapnz.counts["expired"] == 0, "renewed ahead of expiry, not after a 401"
    await bearer.aclose()


async def test_a_token_that_expires_during_a_request_is_renewed_and_the_request_sent_again(
    trapnz: TrapNZServer,
) -> None:
    bearer = OAuthBearer(oauth_client(trapnz), name="sink trapnz")
    async with httpx.AsyncClient(auth=bearer, timeout=5) as client:
        assert (await post(client, trapnz.record_url)).status_code == 201
        trapnz.expire_tokens()  # the server ends it while the client still thinks it valid
        response = await post(client, trapnz.record_url, "Trap2")
    assert response.status_code == 201
    assert trapnz.counts["expired"] == 1
    assert trapnz.grants("refresh_token") == 1
    assert [r.dev_id for r in trapnz.records] == ["Trap1", "Trap2"]
    await bearer.aclose()


async def test_a_refused_refresh_falls_back_to_the_password_grant(trapnz: TrapNZServer) -> None:
    bearer = OAuthBearer(oauth_client(trapnz), name="sink trapnz")
    async with httpx.AsyncClient(auth=bearer, timeout=5) as client:
        assert (await post(client, trapnz.record_url)).status_code == 201
        trapnz.refuse_refresh()
        await renewal_due(bearer)
        response = await post(client, trapnz.record_url, "Trap2")
    assert response.status_code == 201
    assert trapnz.counts["refused:refresh_token"] == 1
    assert trapnz.grants("password") == 2
    assert bearer.status().failures == 0
    await bearer.aclose()


async def test_a_token_endpoint_outage_backs_off_and_is_seen_in_the_store(
    trapnz: TrapNZServer, store: Store
) -> None:
    bearer = OAuthBearer(oauth_client(trapnz), name="sink trapnz", keeper=store, key=KEY)
    trapnz.fail_tokens(503)
    with pytest.raises(AuthError) as first:
        await bearer.token()
    assert first.value.retry_after is not None and 0.4 < first.value.retry_after <= 1.0
    assert "HTTP 503" in str(first.value) and not first.value.refused

    # Asking again at once does not call the endpoint: it waits out the back-off.
    calls = len(trapnz.requests)
    started = time.monotonic()
    tries = 0
    while time.monotonic() - started < 2.5:
        tries += 1
        with pytest.raises(AuthError):
            await bearer.token()
        await asyncio.sleep(0.01)
    made = len(trapnz.requests) - calls
    assert tries > 50 and 1 <= made <= 3, f"{made} token requests in 2.5 s: no tight loop"
    status = bearer.status()
    assert status.failures == 1 + made and status.last_error and "HTTP 503" in status.last_error
    health = await store.token_health(KEY)
    assert health is not None and health.failures == status.failures
    assert health.last_error is not None and "HTTP 503" in health.last_error

    trapnz.recover()

    async def got_one() -> bool:
        try:
            await bearer.token()
        except AuthError:
            return False
        return True

    await eventually(got_one, "a token once the endpoint is back", timeout=10)
    health = await store.token_health(KEY)
    assert health is not None and (health.failures, health.last_error) == (0, None)
    assert bearer.status().failures == 0
    await bearer.aclose()


async def test_a_restart_uses_the_kept_rotated_refresh_token(
    trapnz: TrapNZServer, store: Store
) -> None:
    first = OAuthBearer(oauth_client(trapnz), name="sink trapnz", keeper=store, key=KEY)
    await first.token()
    await renewal_due(first)
    await first.token()  # refreshed: the refresh token rotated
    await first.aclose()
    assert (trapnz.grants("password"), trapnz.grants("refresh_token")) == (1, 1)

    again = OAuthBearer(oauth_client(trapnz), name="sink trapnz", keeper=store, key=KEY)
    kept = await again.token()
    assert kept.access == (await store.load_token(KEY)).access_token  # type: ignore[union-attr]
    assert (trapnz.grants("password"), trapnz.grants("refresh_token")) == (1, 1), "no new grant"
    await renewal_due(again)
    await again.token()
    assert (trapnz.grants("password"), trapnz.grants("refresh_token")) == (1, 2)
    assert trapnz.counts["refused:refresh_token"] == 0, "the rotated token was the one kept"
    await again.aclose()

    # Settings for another user: the kept token is not theirs.
    other = OAuthBearer(
        oauth_client(trapnz, username="someone@example.org"),
        name="sink trapnz",
        keeper=store,
        key=KEY,
    )
    with pytest.raises(AuthError, match=r"HTTP 400 \(invalid_grant"):
        await other.token()
    assert trapnz.counts["refused:password"] == 1
    await other.aclose()


async def test_wrong_client_credentials_are_refused_and_named(trapnz: TrapNZServer) -> None:
    bearer = OAuthBearer(oauth_client(trapnz, client_secret=SecretStr("wrong")), name="sink trapnz")
    with pytest.raises(AuthError) as refused:
        await bearer.token()
    assert refused.value.refused and refused.value.status == 401
    assert "invalid_client" in str(refused.value) and trapnz.token_url in str(refused.value)
    await bearer.aclose()


async def test_an_unreachable_endpoint_is_an_outage_not_a_refusal() -> None:
    trapnz = TrapNZServer()  # never started: the port refuses connections
    bearer = OAuthBearer(oauth_client(trapnz), name="sink trapnz")
    with pytest.raises(AuthError) as down:
        await bearer.token()
    assert not down.value.refused and "unreachable" in str(down.value)
    await bearer.aclose()
    await trapnz.__aexit__(None, None, None)


async def test_no_secret_reaches_the_logs(
    trapnz: TrapNZServer, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, httpx and httpcore included
    bearer = OAuthBearer(oauth_client(trapnz), name="sink trapnz", keeper=store, key=KEY)
    async with httpx.AsyncClient(auth=bearer, timeout=5) as client:
        assert (await post(client, trapnz.record_url)).status_code == 201
        trapnz.expire_tokens()
        assert (await post(client, trapnz.record_url)).status_code == 201
        trapnz.refuse_refresh()
        trapnz.expire_tokens()
        assert (await post(client, trapnz.record_url)).status_code == 201
        trapnz.recover()
        trapnz.fail_tokens(400)
        trapnz.expire_tokens()
        with pytest.raises(AuthError):
            await post(client, trapnz.record_url)
    await bearer.aclose()
    text = caplog.text
    assert "refresh token was refused" in text and "HTTP 400" in text, "the logs tell the story"
    for secret in (CREDS.client_secret, CREDS.password, *trapnz.secrets_issued):
        assert secret not in text
        assert secret[:24] not in text
