"""One publishing MQTT connection that reports each PUBACK (QoS 1) or write (QoS 0).

paho-mqtt (already the MQTT source's library) driven by the asyncio loop through the source's
FastClient and LoopDriver: the socket is connected in a worker thread with a deadline, and
every paho callback runs on the event-loop thread, so a PUBACK resolves its future directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from fieldbridge.errors import RetryableDeliveryError
from fieldbridge.sources.mqtt.client import FastClient, LoopDriver, open_socket

log = logging.getLogger("fieldbridge.sinks.mqtt")

KEEPALIVE = 60  # seconds
MAX_INFLIGHT = 100  # QoS 1 messages awaiting PUBACK; paho holds the rest of a batch in order
MessageHandler = Callable[[str, bytes], None]


class MqttConnection:
    """A connection to one broker; `open` once, then publish and confirm.

    TLS (the socket is wrapped before CONNECT) and credentials are part of the very first
    CONNECT. Lost for good once closed or dropped: the caller makes a new one.
    """

    broker = "the broker"  # how errors name the other end

    def __init__(
        self,
        *,
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        client_id: str,
        timeout: float,
        what: str,
        username: str | None = None,
        password: str | None = None,
        keepalive: int = KEEPALIVE,
        max_inflight: int = MAX_INFLIGHT,
        on_message: MessageHandler | None = None,
        broker: str | None = None,
    ) -> None:
        self._host, self._port, self._tls = host, port, tls
        self._timeout = timeout
        self.what = what  # names the sink (and device) in errors; never a secret
        if broker is not None:
            self.broker = broker
        self._on_message = on_message
        self._client = FastClient(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=True,
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        if username is not None:
            self._client.username_pw_set(username, password)
        self._client.max_inflight_messages_set(max_inflight)
        self._client.connect_async(host, port, keepalive=keepalive)
        self._client.on_connect = self._connected
        self._client.on_disconnect = self._disconnected
        self._client.on_publish = self._published
        self._client.on_subscribe = self._subscribed
        self._client.on_message = self._message
        self._driver: LoopDriver | None = None
        self._connack: asyncio.Future[ReasonCode] | None = None
        self._acks: dict[int, asyncio.Future[None]] = {}
        self._subacks: dict[int, asyncio.Future[None]] = {}
        self.lost: str | None = "not connected"  # why the connection is unusable, None if open
        self._gone = asyncio.Event()  # set once an opened connection is lost or closed

    @property
    def usable(self) -> bool:
        return self.lost is None

    async def open(self) -> None:
        """Connect and wait for CONNACK; raise what `refused` makes of a refusal, or
        RetryableDeliveryError."""
        loop = asyncio.get_running_loop()
        self._driver = LoopDriver(self._client, loop)
        opening = loop.run_in_executor(
            None, open_socket, self._host, self._port, self._tls, self._timeout
        )
        try:
            sock = await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_close_if_opened)
            raise
        except OSError as exc:
            raise RetryableDeliveryError(
                f"{self.what}: cannot reach {self.broker} at {self._host}:{self._port} "
                f"({getattr(exc, 'strerror', None) or exc})"
            ) from None
        self._connack = loop.create_future()
        self.lost = None
        self._client.use_socket(sock)
        self._client.reconnect()
        try:
            reason = await asyncio.wait_for(asyncio.shield(self._connack), self._timeout)
        except TimeoutError:
            self.drop()
            raise RetryableDeliveryError(
                f"{self.what}: {self.broker} sent no CONNACK within {self._timeout:g} s (timeout)"
            ) from None
        except RetryableDeliveryError:
            self.drop()
            raise
        if reason.is_failure:
            self.drop()
            raise self.refused(reason)

    def refused(self, reason: ReasonCode) -> Exception:
        """What to raise when the broker refuses CONNECT (a subclass may tell bad credentials
        apart)."""
        return RetryableDeliveryError(
            f"{self.what}: {self.broker} refused the connection ({reason})"
        )

    async def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe and wait for SUBACK."""
        result, mid = self._client.subscribe(topic, qos)
        self._check(result)
        assert mid is not None  # paho gives a message id to every subscription it sends
        waiter = asyncio.get_running_loop().create_future()
        self._subacks[mid] = waiter
        await self._await([waiter], f"SUBACK for {topic}")

    def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> asyncio.Future[None]:
        """Send; the future resolves at PUBACK (QoS 1) or once written (QoS 0), and fails if
        the connection is lost first."""
        if self.lost is not None:
            raise RetryableDeliveryError(f"{self.what}: connection lost ({self.lost})")
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        self._check(info.rc)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._acks[info.mid] = waiter
        return waiter

    async def confirm(self, waiters: Sequence[asyncio.Future[None]]) -> None:
        """Wait for every PUBACK, at most `timeout` seconds; RetryableDeliveryError if not."""
        await self._await(waiters, f"PUBACK of {len(waiters)} message(s)")

    async def _await(self, waiters: Sequence[asyncio.Future[Any]], what: str) -> None:
        if not waiters:
            return
        done, pending = await asyncio.wait(waiters, timeout=self._timeout)
        for waiter in done:
            waiter.result()  # raises what the connection's loss set
        if pending:
            self.drop()
            raise RetryableDeliveryError(
                f"{self.what}: no {what} within {self._timeout:g} s (timeout); resending"
            )

    def close(self) -> None:
        """Say DISCONNECT if connected, then close the socket."""
        if self.lost is None:
            with contextlib.suppress(Exception):
                self._client.disconnect()
                self._client.loop_write()
        self.drop()

    def drop(self) -> None:
        with contextlib.suppress(Exception):
            self._client.drop()
        self._fail("closed")

    def _check(self, result: MQTTErrorCode) -> None:
        if result not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_QUEUE_SIZE):
            self.drop()
            raise RetryableDeliveryError(f"{self.what}: connection lost ({result.name})")

    async def wait_lost(self) -> None:
        """Return once the connection is lost or closed."""
        await self._gone.wait()

    def _fail(self, why: str) -> None:
        if self.lost is None:
            self.lost = why
        self._gone.set()
        error = RetryableDeliveryError(f"{self.what}: connection lost ({self.lost}); resending")
        for waiters in (self._acks, self._subacks):
            for waiter in waiters.values():
                if not waiter.done():
                    waiter.set_exception(error)
            waiters.clear()
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(error)

    # --- paho callbacks (event-loop thread) --------------------------------------------------

    def _connected(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(reason)

    def _disconnected(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self._fail("the connection closed" if reason.value in (0, 128) else str(reason))

    def _published(
        self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        waiter = self._acks.pop(mid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _subscribed(
        self, client: paho.Client, userdata: Any, mid: int, codes: list[ReasonCode], props: Any
    ) -> None:
        waiter = self._subacks.pop(mid, None)
        if waiter is None or waiter.done():
            return
        if any(code.is_failure for code in codes):
            waiter.set_exception(
                RetryableDeliveryError(f"{self.what}: {self.broker} refused a subscription")
            )
        else:
            waiter.set_result(None)

    def _message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if self._on_message is not None:
            self._on_message(message.topic, bytes(message.payload))


def _close_if_opened(opening: asyncio.Future[socket.socket]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()
