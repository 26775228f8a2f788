"""MQTT source: subscribes, hands each message to ingest, and PUBACKs it only after commit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from fieldbridge.errors import StoreError
from fieldbridge.model import Accepted, Outcome, Rejected
from fieldbridge.sources.mqtt.broker import EmbeddedBroker, start_if_absent
from fieldbridge.sources.mqtt.client import (
    FastClient,
    LoopDriver,
    open_socket,
    pubacks,
    tls_context,
)
from fieldbridge.sources.mqtt.settings import MqttSettings

if TYPE_CHECKING:
    from fieldbridge.ingest import Ingest
    from fieldbridge.sources.mqtt.monitor import TrapnetMonitor

log = logging.getLogger("fieldbridge.sources.mqtt")

ONLINE = b"online"
OFFLINE = b"offline"
FIRST_RETRY = 0.5  # seconds before the first reconnect; doubles up to max_backoff
STABLE_AFTER = 10.0  # a connection that lasted this long starts the back-off afresh
CONNECT_TIMEOUT = 10.0  # TCP + TLS + CONNACK, and SUBACK
STOP_TIMEOUT = 2.0  # for the offline status and DISCONNECT at shutdown
REJECTS_EVERY = 10.0  # seconds between reports of quarantined payloads
METAS = 4096  # meta mappings kept for reuse (one per topic, qos, retain); then started afresh

# CONNACK refusals caused by settings, and which settings to check (MQTT 5 reason codes;
# paho maps MQTT 3.1.1's return codes 1-5 onto them).
REFUSED = {
    132: "protocol (the broker does not speak this MQTT version)",
    133: "client_id (the broker rejects it)",
    134: "username and password",
    135: "username and password (or the broker's access rules for this client_id)",
    138: "username (banned by the broker)",
    140: "the authentication method",
}


class ConnectFailed(Exception):
    """One connection attempt failed; `state` groups alike failures so each is logged once."""

    def __init__(self, state: str, message: str, *, level: int = logging.WARNING) -> None:
        super().__init__(message)
        self.state = state
        self.level = level


# A message handed to ingest, waiting for its answer: its future, the connection's generation,
# packet id, qos, topic, and a trap-network request to answer once committed (or None). A plain
# tuple: one is made per message.
_Handed = tuple[asyncio.Future[Outcome], int, int, int, str, bytes | None]


class MqttSource:
    """One [[sources.mqtt]]: a persistent MQTT session whose messages become readings.

    QoS 1 messages are acknowledged after ingest committed them (or put them in quarantine);
    when the store fails they stay unacknowledged and the session is reconnected so the
    broker sends them again. When ingest is full the socket is not read (back-pressure).
    """

    def __init__(
        self, settings: MqttSettings, ingest: Ingest, monitor: TrapnetMonitor | None = None
    ) -> None:
        self.monitor = monitor
        self.name = settings.name
        self.settings = settings
        self._ingest = ingest
        self._codec = settings.decoder
        self._where = settings.where
        self._url = settings.url
        self._status_topic = settings.status_topic or None
        self._tls = tls_context(settings)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: FastClient | None = None
        self._driver: LoopDriver | None = None
        self._task: asyncio.Task[None] | None = None
        self._room_task: asyncio.Task[None] | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._broker: EmbeddedBroker | None = None
        self._generation = 0  # one per connection; acks of an older one are not sent
        self._connected = False
        self._subscribed = False
        self._had_session = False  # a session was set up in this process's lifetime
        self._connack: asyncio.Future[tuple[ReasonCode, bool]] | None = None
        self._lost: asyncio.Future[str] | None = None
        self._subacks: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._published: dict[int, asyncio.Future[None]] = {}
        # Handed to ingest, not yet answered, in the order received: answered (PUBACKed) in
        # that order each time ingest resolved a batch, as MQTT asks.
        self._handed: deque[_Handed] = deque()
        self._stop_sweeping: Callable[[], None] | None = None
        self._drained = asyncio.Event()
        self._stopping = False
        self._store_failing = False
        self._store_backoff = 0.0
        self._state: str | None = None  # the last state logged
        self._refused_topics: set[str] = set()
        self._rejects = 0
        self._rejects_logged = 0.0
        # One meta mapping per (topic, qos, retain), handed in with every message alike: not
        # built for each, and ingest writes its JSON once a batch.
        self._metas: dict[tuple[str, int, bool], Mapping[str, Any]] = {}

    @property
    def connected(self) -> bool:
        """Connected (CONNACK received); the subscription may still be on its way."""
        return self._connected

    @property
    def subscribed(self) -> bool:
        """Connected and subscribed (SUBACK received): what is published now reaches us."""
        return self._subscribed

    @property
    def reading(self) -> bool:
        """False while the socket is not read (ingest full, or reconnecting after a failure)."""
        return self._driver is not None and not self._driver.paused

    @property
    def in_flight(self) -> int:
        """Messages handed to ingest and not yet answered."""
        return len(self._handed)

    # --- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> MqttSource:
        self._loop = asyncio.get_running_loop()
        if self.settings.embedded_broker == "auto":
            self._broker = await start_if_absent(self.settings.endpoint, self._where)
        if self.settings.qos == 2:
            log.warning(
                "%s: qos 2 is acknowledged (PUBREC) by the MQTT client before fieldbridge "
                "commits, so a crash or restart at that moment can lose a message; qos 1 cannot",
                self._where,
            )
        self._client = self._new_client()
        self._driver = LoopDriver(self._client, self._loop)
        self._stop_sweeping = self._ingest.on_answered(self._sweep)
        self._task = asyncio.create_task(self._maintain(), name=f"mqtt-{self.name}")
        if self.monitor is not None:
            await self.monitor.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self.close()
        finally:
            if self.monitor is not None:
                await self.monitor.__aexit__(*exc_info)

    async def close(self) -> None:
        """Stop taking messages, answer those handed in, say offline, disconnect."""
        self._stopping = True
        if self._driver is not None:
            self._driver.pause()  # what is not read stays with the broker
        while self._handed:
            self._drained.clear()
            await self._drained.wait()
        if self._stop_sweeping is not None:
            self._stop_sweeping()
        if self._connected:
            self._require_driver().resume()  # for the PUBACK of the offline status
            await self._say_goodbye()
        for task in (self._task, self._room_task, self._reconnect_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._client is not None:
            self._client.drop()
        if self._broker is not None:
            await self._broker.__aexit__(None, None, None)
            log.info("%s: embedded broker stopped", self._where)
        log.info("%s: stopped", self._where)

    async def _say_goodbye(self) -> None:
        client = self._require_client()
        if self._status_topic:
            info = client.publish(self._status_topic, OFFLINE, qos=1, retain=True)
            waiter = self._published.setdefault(info.mid, self._require_loop().create_future())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, STOP_TIMEOUT)
        lost = self._lost
        client.disconnect()
        if lost is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(lost), STOP_TIMEOUT)

    # --- the connection, kept up forever ---------------------------------------------------

    async def _maintain(self) -> None:
        loop = self._require_loop()
        backoff = FIRST_RETRY
        while True:
            started = loop.time()
            try:
                reason = await self._session()
            except ConnectFailed as exc:
                self._report(
                    exc.state,
                    exc.level,
                    f"{exc}; retrying (back-off up to {self.settings.max_backoff:g} s)",
                )
            else:
                if self._stopping:
                    return
                lasted = loop.time() - started
                if lasted >= STABLE_AFTER:
                    backoff = FIRST_RETRY
                elif reason == "connection lost":  # e.g. another client took the session
                    reason += (
                        f" after {lasted:.1f} s (if this repeats, check that no other client "
                        f"uses client_id {self.settings.client_id!r})"
                    )
                self._report(
                    "disconnected",
                    logging.WARNING,
                    f"{self._where}: disconnected from {self._url}: {reason}; reconnecting",
                )
            delay = max(backoff, self._store_backoff)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, self.settings.max_backoff)

    async def _session(self) -> str:
        """Connect, subscribe, say online; return why the connection ended."""
        settings = self.settings
        client = self._require_client()
        driver = self._require_driver()
        loop = self._require_loop()
        sock = await self._open_socket()
        self._generation += 1
        self._store_failing = False
        self._connack = loop.create_future()
        self._lost = loop.create_future()
        lost = self._lost
        driver.resume()  # the CONNACK must be read even if the last session paused reading
        client.use_socket(sock)
        client.reconnect()
        try:
            reason, resumed = await self._until_lost(self._connack, "CONNACK")
        except BaseException:
            client.drop()
            raise
        if reason.is_failure:
            client.drop()
            raise self._refusal(reason)
        self._connected = True
        if self._had_session and not resumed and not settings.clean_session:
            log.warning(
                "%s: the broker at %s did not keep the session of %s: messages published "
                "while fieldbridge was away are lost unless the broker persists sessions "
                "(Mosquitto: persistence true)",
                self._where,
                self._url,
                settings.client_id,
            )
        self._had_session = True
        try:
            try:
                await self._subscribe()
            except ConnectFailed:
                client.drop()
                raise
            self._subscribed = True
            if self._status_topic:
                client.publish(self._status_topic, ONLINE, qos=1, retain=True)
            topics = ", ".join(settings.topics)
            self._report(
                "connected",
                logging.INFO,
                f"{self._where}: connected to {self._url} as {settings.client_id} "
                f"({'session resumed' if resumed else 'new session'}); subscribed to {topics} "
                f"at qos {settings.qos}",
            )
            return await lost
        finally:
            self._connected = self._subscribed = False

    async def _open_socket(self) -> socket.socket:
        endpoint = self.settings.endpoint
        loop = self._require_loop()
        opening = loop.run_in_executor(
            None, open_socket, endpoint.host, endpoint.port, self._tls, CONNECT_TIMEOUT
        )
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_close_if_opened)
            raise
        except ssl.SSLCertVerificationError as exc:
            raise ConnectFailed(
                "tls",
                f"{self._where}: the broker's TLS certificate at {self._url} was refused "
                f"({exc.verify_message}); check ca_file, or that the url's host is the name "
                "in the certificate",
                level=logging.ERROR,
            ) from None
        except ssl.SSLError as exc:
            raise ConnectFailed(
                "tls",
                f"{self._where}: TLS handshake with {self._url} failed ({exc.reason or exc}); "
                "check ca_file, cert_file and key_file",
                level=logging.ERROR,
            ) from None
        except OSError as exc:
            raise ConnectFailed(
                "unreachable",
                f"{self._where}: cannot reach the MQTT broker at {self._url} "
                f"({exc.strerror or exc})",
            ) from None

    async def _until_lost(self, waiter: asyncio.Future[Any], what: str) -> Any:
        lost = self._lost
        assert lost is not None
        done, _ = await asyncio.wait(
            {waiter, lost}, timeout=CONNECT_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        if waiter in done:
            return waiter.result()
        if lost in done:
            raise ConnectFailed(
                "lost",
                f"{self._where}: {self._url} closed the connection before {what} ({lost.result()})",
            )
        raise ConnectFailed(
            "timeout",
            f"{self._where}: the broker at {self._url} sent no {what} within {CONNECT_TIMEOUT:g} s",
        )

    async def _subscribe(self) -> None:
        settings = self.settings
        client = self._require_client()
        wanted: list[tuple[str, int]] = [(topic, settings.qos) for topic in settings.topics]
        _, mid = client.subscribe(wanted)
        assert mid is not None
        waiter = self._require_loop().create_future()
        self._subacks[mid] = waiter
        try:
            granted: list[ReasonCode] = await self._until_lost(waiter, "SUBACK")
        finally:
            self._subacks.pop(mid, None)
        for topic, code in zip(settings.topics, granted, strict=False):
            if code.is_failure:
                if topic not in self._refused_topics:
                    log.error(
                        "%s: the broker refused the subscription to %r (%s); check topics "
                        "and the broker's access rules (and $share support)",
                        self._where,
                        topic,
                        code,
                    )
                self._refused_topics.add(topic)
            elif code.value < settings.qos:
                log.warning(
                    "%s: the broker granted qos %d, not %d, for %r; messages it sends at qos "
                    "0 are not redelivered after a failure",
                    self._where,
                    code.value,
                    settings.qos,
                    topic,
                )

    def _refusal(self, reason: ReasonCode) -> ConnectFailed:
        check = REFUSED.get(reason.value)
        if check is None:
            return ConnectFailed(
                f"refused-{reason.value}",
                f"{self._where}: the broker at {self._url} refused the connection ({reason})",
            )
        return ConnectFailed(
            f"refused-{reason.value}",
            f"{self._where}: the broker at {self._url} refused the connection ({reason}); "
            f"check {self._where} {check}",
            level=logging.ERROR,
        )

    def _report(self, state: str, level: int, message: str) -> None:
        """Log a state change once; the same state again is only a debug line."""
        log.log(level if state != self._state else logging.DEBUG, "%s", message)
        self._state = state

    # --- messages ---------------------------------------------------------------------------

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        """paho's path: MQTT 5, QoS 2, packets that arrived in parts."""
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = "(topic not valid UTF-8)"
        self._take(topic, bytes(message.payload), message.qos, message.mid, message.retain)

    def _take(self, topic: str, payload: bytes, qos: int, mid: int, retain: bool) -> None:
        """One PUBLISH: hand it to ingest; its PUBACK waits for the commit."""
        if self._stopping and qos == 1:
            return  # not acknowledged: the broker sends it to the next session
        if topic == self._status_topic or (self.monitor and self.monitor.publishes(topic)):
            if qos:
                self._require_client().ack(mid, qos)  # our own status, not device data
            return
        # Never raise into paho: its packet state would be left half-way.
        try:
            meta = self._metas.get((topic, qos, retain))
            if meta is None:
                if len(self._metas) >= METAS:
                    self._metas.clear()
                meta = self._metas[(topic, qos, retain)] = {
                    "topic": topic,
                    "qos": qos,
                    "retain": retain,
                }
            future = self._ingest.offer(self.name, payload, self._codec, meta)
        except StoreError:
            return  # ingest is closing: unacknowledged, so the broker keeps it
        except Exception:
            log.exception("%s: a message on %r was not handed to ingest", self._where, topic)
            return
        asks = None
        if self.monitor is not None:
            self.monitor.received(topic)
            if b"Reply" in payload:
                asks = payload  # answered once committed
        self._handed.append((future, self._generation, mid, qos, topic, asks))
        if not self._ingest.has_room:
            self._wait_for_room()

    def _sweep(self) -> None:
        """Ingest resolved a batch: answer the messages at the head that are answered, in the
        order received; the PUBACKs of all of them go in one write."""
        handed = self._handed
        generation = self._generation
        acks: list[int] = []
        committed = False
        while handed and handed[0][0].done():
            future, came_on, mid, qos, topic, asks = handed.popleft()
            try:  # result() once, rather than cancelled(), exception() and result()
                outcome = future.result()
            except asyncio.CancelledError:
                continue
            except Exception as failure:  # what ingest answers a failed commit with
                self._store_failed(failure, came_on)
                continue
            committed = True
            if type(outcome) is not Accepted or outcome.quarantined or asks is not None:
                self._answered(topic, asks, outcome)
            if came_on != generation:
                continue  # the connection it came on is gone: the broker sends it again
            if qos == 1:
                acks.append(mid)
            elif qos == 2:
                self._require_client().ack(mid, 2)
        if committed:
            self._store_backoff = 0.0
        if acks:
            self._require_client().queue_pubacks(pubacks(acks))
        if not handed:
            self._drained.set()

    def _answered(self, topic: str, asks: bytes | None, outcome: Outcome) -> None:
        """What an answer says beyond its PUBACK: quarantined parts, a trap-network request."""
        if type(outcome) is Rejected:
            self._note_rejected(outcome, topic)
        elif isinstance(outcome, Accepted) and outcome.quarantined:  # acknowledged all the same
            for part in outcome.quarantined:
                self._note_rejected(part, topic)
        if asks is not None and isinstance(outcome, Accepted) and self.monitor is not None:
            self.monitor.committed(topic, asks)

    def _wait_for_room(self) -> None:
        driver = self._require_driver()
        if not driver.paused:
            log.debug(
                "%s: ingest is full; not reading from the broker until it has room", self._where
            )
        driver.pause()
        if self._room_task is None or self._room_task.done():
            self._room_task = asyncio.create_task(self._resume_with_room())

    async def _resume_with_room(self) -> None:
        await self._ingest.wait_for_room()
        if not self._store_failing:
            log.debug("%s: ingest has room; reading again", self._where)
            self._require_driver().resume()

    def _store_failed(self, failure: BaseException, generation: int) -> None:
        if self._stopping or generation != self._generation or self._store_failing:
            return
        self._store_failing = True
        self._store_backoff = min(max(1.0, self._store_backoff * 2), self.settings.max_backoff)
        log.warning(
            "%s: the store failed (%s); the messages stay unacknowledged and the session is "
            "reconnected in %g s so the broker sends them again",
            self._where,
            failure,
            self._store_backoff,
        )
        self._require_driver().pause()
        self._reconnect_task = asyncio.create_task(
            self._reconnect_when_answered(generation, str(failure))
        )

    async def _reconnect_when_answered(self, generation: int, failure: str) -> None:
        while self._handed:
            self._drained.clear()
            await self._drained.wait()
        lost = self._lost
        if generation == self._generation and lost is not None and not lost.done():
            lost.set_result(f"reconnecting after a store failure ({failure})")
            self._require_client().disconnect()

    def _note_rejected(self, outcome: Rejected, topic: str) -> None:
        self._rejects += 1
        now = self._require_loop().time()
        if now - self._rejects_logged >= REJECTS_EVERY:
            log.warning(
                "%s: %d payload(s) or item(s) quarantined (latest on %r: %s); see `fieldbridge "
                "quarantine list`",
                self._where,
                self._rejects,
                topic,
                outcome.reason,
            )
            self._rejects = 0
            self._rejects_logged = now

    # --- paho callbacks ----------------------------------------------------------------------

    def _new_client(self) -> FastClient:
        settings = self.settings
        v5 = settings.protocol == "5"
        client = FastClient(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            clean_session=None if v5 else settings.clean_session,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            manual_ack=True,
        )
        if settings.username is not None:
            password = settings.password.get_secret_value() if settings.password else None
            client.username_pw_set(settings.username, password)
        if self._status_topic:
            client.will_set(self._status_topic, OFFLINE, qos=1, retain=True)
        properties = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = (
                0 if settings.clean_session else (settings.session_expiry)
            )
        endpoint = settings.endpoint
        client.connect_async(
            endpoint.host,
            endpoint.port,
            keepalive=settings.keepalive,
            clean_start=settings.clean_session if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_publish_packet = self._take
        return client

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_result((reason, bool(flags.session_present)))

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self._generation += 1  # answers still to come belong to the lost connection
        if self._lost is not None and not self._lost.done():
            if flags.is_disconnect_packet_from_server:
                text = f"the broker disconnected us ({reason})"
                if reason.value == 142:  # Session taken over
                    text += f"; another client uses client_id {self.settings.client_id!r}"
            elif reason.value == 0:
                text = "disconnected"
            elif reason.value == 128:  # paho's "Unspecified error": the socket closed
                text = "connection lost"
            else:
                text = f"connection lost ({reason})"
            self._lost.set_result(text)
        for waiter in self._published.values():
            if not waiter.done():
                waiter.set_result(None)
        self._published.clear()

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, codes: list[ReasonCode], props: Any
    ) -> None:
        waiter = self._subacks.get(mid)
        if waiter is not None and not waiter.done():
            waiter.set_result(codes)

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        waiter = self._published.pop(mid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- small helpers ---------------------------------------------------------------------

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "the source is not running"
        return self._loop

    def _require_client(self) -> FastClient:
        assert self._client is not None, "the source is not running"
        return self._client

    def _require_driver(self) -> LoopDriver:
        assert self._driver is not None, "the source is not running"
        return self._driver


def _close_if_opened(opening: asyncio.Future[socket.socket]) -> None:
    """A connect that finished after its waiter was cancelled: close the socket."""
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()
