"""One MQTT connection the simulated kits and trap nodes publish on, each message at QoS 1.

The MQTT sink's connection (sinks/mqtt_connection.py: paho driven by the event loop, a future
per PUBACK) does the protocol; this adds what a device does when it is lost: connect again on
the next publish, after a pause.
"""

from __future__ import annotations

import asyncio
import ssl
import time

from fieldbridge.errors import RetryableDeliveryError
from fieldbridge.simulate.tally import SendFailed
from fieldbridge.sinks.mqtt_connection import MqttConnection

TIMEOUT = 10.0  # seconds for a connect or a PUBACK
RECONNECT_AFTER = 2.0  # seconds between connection attempts once lost


class MqttLink:
    """`async with MqttLink(...)` connects (SendFailed naming the broker if it cannot);
    `publish` returns at the PUBACK or raises SendFailed."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str,
        tls: ssl.SSLContext | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        scheme = "mqtts" if tls is not None else "mqtt"
        self.where = f"{scheme}://{host}:{port}"
        self._host, self._port, self._tls, self._client_id = host, port, tls, client_id
        self._username, self._password = username, password
        self._connection: MqttConnection | None = None
        self._tried_at = 0.0
        self._lock = asyncio.Lock()

    def _new(self) -> MqttConnection:
        return MqttConnection(
            host=self._host,
            port=self._port,
            tls=self._tls,
            client_id=self._client_id,
            timeout=TIMEOUT,
            what="simulate",
            username=self._username,
            password=self._password,
            broker="the MQTT broker",
        )

    async def __aenter__(self) -> MqttLink:
        await self._connected()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._connection is not None:
            self._connection.close()

    async def _connected(self) -> MqttConnection:
        async with self._lock:
            if self._connection is not None and self._connection.usable:
                return self._connection
            wait = self._tried_at + RECONNECT_AFTER - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._tried_at = time.monotonic()
            connection = self._new()
            try:
                await connection.open()
            except RetryableDeliveryError as exc:
                raise SendFailed(str(exc).removeprefix("simulate: ")) from None
            self._connection = connection
            return connection

    async def publish(self, topic: str, payload: bytes) -> None:
        connection = await self._connected()
        try:
            waiter = connection.publish(topic, payload, qos=1)
            await connection.confirm([waiter])
        except RetryableDeliveryError as exc:
            raise SendFailed(f"{topic}: {str(exc).removeprefix('simulate: ')}") from None
