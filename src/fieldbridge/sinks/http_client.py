"""The httpx client an HTTP sink sends with, built from the settings every HTTP sink has."""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType

import httpx
from pydantic import Field

from fieldbridge import __version__
from fieldbridge.plugin import SinkSettings
from fieldbridge.sinks.base import Destination

# A sink sends one request at a time; a small pool is kept warm between batches.
LIMITS = httpx.Limits(max_connections=4, max_keepalive_connections=2, keepalive_expiry=30.0)


class HttpSinkSettings(SinkSettings):
    """Settings every sink that sends over HTTP has."""

    timeout: float = Field(default=10.0, gt=0)  # seconds for connect, each read and write
    verify_tls: bool = True


def sink_client(
    settings: HttpSinkSettings,
    headers: Mapping[str, str],
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    limits: httpx.Limits = LIMITS,
) -> httpx.AsyncClient:
    """A client with the sink's deadline, TLS check, pool and headers (User-Agent unless given).

    `transport` replaces the network transport (httpx's seam: a test or a caller plugs in its
    own); without it, one is made with `verify_tls` and `limits`.
    """
    merged = httpx.Headers({"User-Agent": f"fieldbridge/{__version__}"})
    merged.update(headers)  # case-insensitive: a configured user-agent wins
    if transport is None:
        transport = httpx.AsyncHTTPTransport(verify=settings.verify_tls, limits=limits)
    return httpx.AsyncClient(headers=merged, timeout=settings.timeout, transport=transport)


class HttpDestination(Destination):
    """A destination sending with one httpx client (`_client`, made on entering), closed on
    leaving."""

    _client: httpx.AsyncClient | None = None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
