"""Gateway mode: all devices' telemetry over one MQTT connection with the gateway's token."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from fieldbridge.errors import RetryableDeliveryError
from fieldbridge.model import JournalEntry
from fieldbridge.sinks.thingsboard_mqtt import TbConnection, TokenRefused
from fieldbridge.sinks.thingsboard_render import (
    Point,
    gateway_attributes,
    gateway_connect,
    gateway_telemetry,
    points,
)
from fieldbridge.sinks.thingsboard_settings import ThingsBoardSettings

log = logging.getLogger("fieldbridge.sinks.thingsboard")

CONNECT = "v1/gateway/connect"
TELEMETRY = "v1/gateway/telemetry"
ATTRIBUTES = "v1/gateway/attributes"
DISCONNECT = "v1/gateway/disconnect"  # TB -> gateway: {"device", "reason"}; 150 = rate limit
RATE_LIMIT = 150


class GatewayLink:
    """The gateway connection, the devices announced on it and the attributes sent on it."""

    def __init__(self, settings: ThingsBoardSettings) -> None:
        self.settings = settings
        self._what = f"thingsboard {settings.name}"
        self._conn: TbConnection | None = None
        self._announced: set[str] = set()
        self._attributes_sent: dict[str, dict[str, Any]] = {}
        self._rate_limited: list[str] = []

    async def send(
        self, entries: Sequence[JournalEntry], attributes: Mapping[str, Mapping[str, Any]]
    ) -> None:
        """Publish the batch; return once every message of it was acknowledged (PUBACK)."""
        conn = await self._connection()
        waiters: list[asyncio.Future[None]] = []
        for entry in entries:
            if entry.device not in self._announced:
                waiters.append(conn.publish(CONNECT, gateway_connect(entry.device, entry.kind)))
                self._announced.add(entry.device)
        changed = {
            device: dict(values)
            for device, values in attributes.items()
            if values and self._attributes_sent.get(device) != values
        }
        if changed:
            waiters.append(conn.publish(ATTRIBUTES, gateway_attributes(changed)))
        for payload in self._telemetry(entries):
            waiters.append(conn.publish(TELEMETRY, payload))
        await conn.confirm(waiters)
        if self._rate_limited:
            devices = ", ".join(sorted(set(self._rate_limited)))
            self._rate_limited.clear()
            raise RetryableDeliveryError(
                f"{self._what}: ThingsBoard's rate limit was reached (disconnect reason 150 for "
                f"{devices}); backing off, then resending from the cursor"
            )
        self._attributes_sent.update(changed)

    def _telemetry(self, entries: Sequence[JournalEntry]) -> list[bytes]:
        """`v1/gateway/telemetry` payloads of at most max_payload bytes each (a single
        message's points that are larger still go alone)."""
        out: list[bytes] = []
        current: dict[str, list[Point]] = {}
        size = 2
        for entry in entries:
            found = points(entry)
            if not found:
                continue
            grow = len(orjson.dumps(found)) + len(entry.device.encode()) + 8
            if current and size + grow > self.settings.max_payload:
                out.append(gateway_telemetry(current))
                current, size = {}, 2
            current.setdefault(entry.device, []).extend(found)
            size += grow
        if current:
            out.append(gateway_telemetry(current))
        return out

    async def _connection(self) -> TbConnection:
        if self._conn is not None and self._conn.usable:
            return self._conn
        if self._conn is not None:
            log.info("%s: reconnecting to %s (%s)", self._what, self.settings.url, self._conn.lost)
        assert self.settings.token is not None  # the settings refuse gateway mode without one
        conn = TbConnection(
            host=self.settings.host,
            port=self.settings.port,
            tls=self.settings.tls(),
            token=self.settings.token.get_secret_value(),
            client_id=f"fieldbridge-{self.settings.name}",
            timeout=self.settings.timeout,
            what=self._what,
            on_message=self._message,
        )
        self._conn = conn
        self._announced.clear()
        self._attributes_sent.clear()
        try:
            await conn.open()
        except TokenRefused as exc:
            # The operator must fix the token: keep every message and retry (sink `failing`).
            raise RetryableDeliveryError(
                f"{self._what}: ThingsBoard refused the gateway token (CONNACK {exc.code}); "
                "set token to the access token of a device with 'Is gateway' on",
                status=401,
            ) from None
        try:
            await conn.subscribe(DISCONNECT)
        except RetryableDeliveryError:
            conn.drop()  # without the rate-limit notices the connection is not used
            raise
        log.info("%s: connected to %s as a gateway", self._what, self.settings.url)
        return conn

    def _message(self, topic: str, payload: bytes) -> None:
        if topic != DISCONNECT:
            return
        try:
            notice = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if not isinstance(notice, dict) or not isinstance(notice.get("device"), str):
            return
        device = notice["device"]
        self._announced.discard(device)  # TB forgot the device's session: announce it again
        if notice.get("reason") == RATE_LIMIT:
            # Messages since the last confirmed batch may have been dropped: the batch in
            # flight (or the next one) is resent after a back-off.
            log.warning("%s: ThingsBoard reports its rate limit reached for %s", self._what, device)
            self._rate_limited.append(device)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
