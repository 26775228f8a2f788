"""Device and HTTP modes: each device's telemetry with its own access token."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from fieldbridge.errors import PermanentDeliveryError, RetryableDeliveryError
from fieldbridge.model import JournalEntry
from fieldbridge.sinks.http_errors import check_response
from fieldbridge.sinks.thingsboard_mqtt import TbConnection, TokenRefused
from fieldbridge.sinks.thingsboard_render import (
    Point,
    device_telemetry,
    flat_attributes,
    points,
    sized,
)
from fieldbridge.sinks.thingsboard_settings import ThingsBoardSettings

log = logging.getLogger("fieldbridge.sinks.thingsboard")

TELEMETRY = "v1/devices/me/telemetry"
ATTRIBUTES = "v1/devices/me/attributes"
REFUSED_FOR = 60.0  # seconds a refused token is not tried again (a batch may hold many messages)


class DeviceTransport(Protocol):
    """Sends one device's messages with its token; PermanentDeliveryError if the token is bad."""

    async def send(
        self, device: str, token: str, entries: Sequence[JournalEntry], attributes: dict[str, Any]
    ) -> None: ...

    async def close(self) -> None: ...


def refused_token(what: str, device: str, answer: str, settings: ThingsBoardSettings) -> str:
    return (
        f"{what}: ThingsBoard refused the token of device {device} ({answer}); fix it with "
        f"`fieldbridge devices set {device} --attr {settings.token_attribute}=TOKEN`, then "
        "retry its dead letters"
    )


def _all_points(entries: Sequence[JournalEntry]) -> list[Point]:
    return [p for e in entries for p in points(e)]


class MqttDevices:
    """A bounded set of device connections, least recently used closed first."""

    def __init__(self, settings: ThingsBoardSettings) -> None:
        self.settings = settings
        self._what = f"thingsboard {settings.name}"
        self._conns: OrderedDict[tuple[str, str], TbConnection] = OrderedDict()
        self._refused: dict[str, tuple[float, int]] = {}  # token -> (when, CONNACK code)
        self._attributes_sent: dict[tuple[str, str], dict[str, Any]] = {}

    def touch(self, device: str, token: str) -> None:
        if (device, token) in self._conns:
            self._conns.move_to_end((device, token))

    async def send(
        self, device: str, token: str, entries: Sequence[JournalEntry], attributes: dict[str, Any]
    ) -> None:
        conn = await self._connection(device, token)
        waiters: list[asyncio.Future[None]] = []
        if attributes and self._attributes_sent.get((device, token)) != attributes:
            waiters.append(conn.publish(ATTRIBUTES, flat_attributes(attributes)))
        for group in sized(_all_points(entries), self.settings.max_payload):
            waiters.append(conn.publish(TELEMETRY, device_telemetry(group)))
        await conn.confirm(waiters)
        if attributes:
            self._attributes_sent[(device, token)] = attributes

    async def _connection(self, device: str, token: str) -> TbConnection:
        key = (device, token)
        conn = self._conns.get(key)
        if conn is not None and conn.usable:
            self._conns.move_to_end(key)
            return conn
        self._drop(key)
        refused = self._refused.get(token)
        if refused is not None and time.monotonic() - refused[0] < REFUSED_FOR:
            reason = refused_token(self._what, device, f"CONNACK {refused[1]}", self.settings)
            raise PermanentDeliveryError(reason, body=reason)
        while len(self._conns) >= self.settings.max_connections:
            self._drop(next(iter(self._conns)))
        digest = hashlib.sha256(f"{self.settings.name}/{device}".encode()).hexdigest()[:16]
        conn = TbConnection(
            host=self.settings.host,
            port=self.settings.port,
            tls=self.settings.tls(),
            token=token,
            client_id=f"fieldbridge-{digest}",
            timeout=self.settings.timeout,
            what=f"{self._what} (device {device})",
        )
        try:
            await conn.open()
        except TokenRefused as exc:
            self._refused[token] = (time.monotonic(), exc.code)
            reason = refused_token(self._what, device, f"CONNACK {exc.code}", self.settings)
            raise PermanentDeliveryError(reason, body=reason) from None
        self._refused.pop(token, None)
        self._conns[key] = conn
        return conn

    def _drop(self, key: tuple[str, str]) -> None:
        conn = self._conns.pop(key, None)
        self._attributes_sent.pop(key, None)
        if conn is not None:
            conn.close()

    async def close(self) -> None:
        for key in list(self._conns):
            self._drop(key)


class HttpDevices:
    """`POST /api/v1/<token>/telemetry` (and `/attributes`) per device."""

    def __init__(self, settings: ThingsBoardSettings, client: httpx.AsyncClient) -> None:
        self.settings = settings
        self._what = f"thingsboard {settings.name}"
        self._client = client
        self._attributes_sent: dict[tuple[str, str], dict[str, Any]] = {}

    async def send(
        self, device: str, token: str, entries: Sequence[JournalEntry], attributes: dict[str, Any]
    ) -> None:
        base = f"{self.settings.base_url}/api/v1/{quote(token, safe='')}"
        if attributes and self._attributes_sent.get((device, token)) != attributes:
            await self._post(device, f"{base}/attributes", flat_attributes(attributes))
            self._attributes_sent[(device, token)] = attributes
        for group in sized(_all_points(entries), self.settings.max_payload):
            await self._post(device, f"{base}/telemetry", device_telemetry(group))

    async def _post(self, device: str, url: str, body: bytes) -> None:
        # Errors name the device, never the url: the token is part of it.
        what = f"{self._what} (device {device})"
        try:
            response = await self._client.post(
                url, content=body, headers={"Content-Type": "application/json"}
            )
        except httpx.TransportError as exc:
            raise RetryableDeliveryError(
                f"{what}: ThingsBoard unreachable at {self.settings.host}:{self.settings.port} "
                f"({type(exc).__name__})"
            ) from None
        if response.status_code == 401:
            reason = refused_token(self._what, device, "HTTP 401", self.settings)
            raise PermanentDeliveryError(reason, body=f"{reason} {response.text[:200]}".strip())
        check_response(response, what)

    async def close(self) -> None:
        await self._client.aclose()


def by_device(entries: Sequence[JournalEntry]) -> dict[str, list[JournalEntry]]:
    out: dict[str, list[JournalEntry]] = {}
    for entry in entries:
        out.setdefault(entry.device, []).append(entry)
    return out


def token_of(attributes: Mapping[str, Any], name: str) -> str | None:
    token = attributes.get(name)
    return token.strip() if isinstance(token, str) and token.strip() else None
