"""The httpx client the HTTP sinks share: headers, deadline, TLS check, pluggable transport."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from fieldbridge import __version__
from fieldbridge.model import JournalEntry, Reading
from fieldbridge.sinks.http_client import sink_client
from fieldbridge.sinks.thingworx import ThingWorxSettings
from fieldbridge.sinks.webhook import WebhookDestination, WebhookSettings
from tests.fakes.webhook import ACCEPTED, WebhookReceiver

T0 = 1_700_000_000.0


class RecordingTransport(httpx.AsyncBaseTransport):
    """A transport plugged in through the seam: it records each request, then sends it for
    real over httpx's own transport."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self._network = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return await self._network.handle_async_request(request)

    async def aclose(self) -> None:
        await self._network.aclose()


def entry(i: int) -> JournalEntry:
    return JournalEntry(
        id=i,
        received_at=T0 + i,
        source="http",
        device="dev-1",
        kind=None,
        meta={},
        payload=b"{}",
        readings=(Reading("temperature", 20.0 + i, T0 + i, 0, "Cel"),),
    )


async def test_webhook_sends_through_an_injected_transport() -> None:
    transport = RecordingTransport()
    async with WebhookReceiver() as hook:
        sink = WebhookSettings(name="hook", url=hook.url, headers={"X-Farm": "north"})
        async with WebhookDestination(sink, transport=transport) as destination:
            await destination.send([entry(1), entry(2)])
    assert [r.url for r in transport.requests] == [httpx.URL(hook.url)]
    sent = transport.requests[0]
    assert sent.headers["User-Agent"] == f"fieldbridge/{__version__}"
    assert sent.headers["X-Farm"] == "north"
    assert sent.headers["Idempotency-Key"] == "hook:1-2"
    assert hook.received_ids == [1, 2]
    assert [r.outcome for r in hook.requests] == [ACCEPTED]
    assert hook.violations == []


async def test_client_carries_the_common_settings() -> None:
    sink = ThingWorxSettings(
        name="twx", url="https://twx.example", app_key="k", thing="T", timeout=2.5
    )
    headers = {"appKey": "k", "user-agent": "farm-gateway/2"}
    async with sink_client(sink, headers) as client:
        assert client.timeout == httpx.Timeout(2.5)
        assert client.headers["appKey"] == "k"
        # A configured User-Agent replaces fieldbridge's, whatever its case.
        assert client.headers.get_list("User-Agent") == ["farm-gateway/2"]


async def test_injected_transport_is_the_one_used_and_closed() -> None:
    closed: list[bool] = []

    class Answering(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            return httpx.Response(204, request=request)

        async def aclose(self) -> None:
            closed.append(True)

    sink = WebhookSettings(name="hook", url="http://127.0.0.1:9/never")
    async with sink_client(sink, {}, transport=Answering()) as client:
        response = await client.post("http://127.0.0.1:9/never", content=b"{}")
    assert response.status_code == 204
    assert closed == [True]


@pytest.fixture
def self_signed(tmp_path: Path) -> ssl.SSLContext:
    """A server context with a self-signed certificate for 127.0.0.1 that no CA vouches for."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", "key.pem", "-out", "cert.pem", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        cwd=tmp_path, check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return context


@pytest.fixture
async def tls_url(self_signed: ssl.SSLContext) -> AsyncIterator[str]:
    """An HTTPS server on 127.0.0.1 answering every request 204."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")  # the request carries no body
            writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=self_signed)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"https://127.0.0.1:{port}/hook"


async def test_verify_tls_checks_the_certificate(tls_url: str) -> None:
    checked = WebhookSettings(name="hook", url=tls_url)
    async with sink_client(checked, {}) as client:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.get(tls_url)
    unchecked = WebhookSettings(name="hook", url=tls_url, verify_tls=False)
    async with sink_client(unchecked, {}) as client:
        assert (await client.get(tls_url)).status_code == 204
