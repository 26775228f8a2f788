"""paho-mqtt driven by the asyncio loop: reads, writes and timers without a thread.

Why paho-mqtt: with `manual_ack=True` the application, not the library, decides when a QoS 1
PUBACK leaves, which is what "acknowledged only after commit" needs (gmqtt's
`optimistic_acknowledgement=False` does the same but acknowledges when an async handler
returns, a task per message; aiomqtt wraps paho and measured 13k msg/s). paho is protocol only
here: the socket is registered with the event loop (paho's external-loop API: loop_read,
loop_write, loop_misc and the socket callbacks, as aiomqtt does), so a message goes from the
socket to ingest without a thread handoff.

Private paho 2.x hooks are overridden, each for a measured reason (see the numbers in
docs/benchmarks.md); paho_private.py lists every private paho name used here and checks them
each time a FastClient is built, so a paho upgrade fails at start, not in the field:
  * `_sock_recv` reads 256 KiB at a time and serves paho's 1-byte header reads from that
    buffer; stock paho makes three recv() system calls per message.
  * `_packet_read` takes a whole MQTT 3.1.1 PUBLISH at QoS 0 or 1 straight from that buffer
    and hands (topic, payload, qos, packet id, retain) to `on_publish_packet`: paho's generic
    path (packet dict, MQTTMessage, topic matcher, locks) costs about 16 us a message, more
    than ingest itself. Everything else (CONNACK, SUBACK, PINGRESP, QoS 2, MQTT 5 properties,
    partly received packets, and the first packet of each read: paho's 1-byte read of its type
    is what refills the buffer) goes through paho unchanged.
    tests/sources/mqtt/test_client_parser.py checks both paths against stock paho on random
    packet streams.
  * `_create_socket` returns a socket connected (and TLS-handshaken) beforehand in a worker
    thread, so every paho state change happens on the event-loop thread.
  * PUBACKs of one commit go to paho's out queue as one packet (`queue_pubacks`): one send()
    per commit instead of one per message. The bytes are exactly those paho's ack() sends.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion

from fieldbridge.errors import ConfigError
from fieldbridge.sources.mqtt.paho_private import require_compatible
from fieldbridge.sources.mqtt.settings import MqttSettings

READ_CHUNK = 256 * 1024
MISC_EVERY = 1.0  # seconds between paho's keepalive checks (PINGREQ, ping timeout)
PUBACK = struct.Struct("!BBH")  # fixed header 0x40, remaining length 2, packet id
PUBACK_COMMAND = 0x40
PUBLISH_QOS01 = (0x30, 0x32)  # PUBLISH's packet type with QoS 0 or 1 (ignoring DUP, RETAIN)

PublishHandler = Callable[[str, bytes, int, int, bool], None]
"""(topic, payload, qos, packet id, retain) of one PUBLISH."""


def puback(mid: int) -> bytes:
    """The 4-byte PUBACK of packet id `mid` (MQTT 3.1.1, and MQTT 5's success short form)."""
    return PUBACK.pack(PUBACK_COMMAND, 2, mid)


def pubacks(mids: list[int]) -> bytes:
    """The PUBACKs of packet ids `mids`, in order, as one buffer (one pack for all)."""
    head = (PUBACK_COMMAND << 24) | (2 << 16)
    return struct.pack(f"!{len(mids)}I", *[head | mid for mid in mids])


def tls_context(settings: MqttSettings) -> ssl.SSLContext | None:
    """The TLS context of an mqtts:// url, or a ConfigError naming the file at fault."""
    if not settings.endpoint.tls:
        return None
    where = settings.where
    try:
        context = ssl.create_default_context(cafile=settings.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"{where}.ca_file {settings.ca_file}: not a CA certificate: {exc}"
        ) from None
    if settings.cert_file:
        try:
            context.load_cert_chain(settings.cert_file, settings.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"{where}.cert_file/key_file: cannot load the client certificate and key: {exc}"
            ) from None
    if settings.tls_insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def open_socket(host: str, port: int, tls: ssl.SSLContext | None, timeout: float) -> socket.socket:
    """A blocking connect (and TLS handshake): run it in a worker thread."""
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=host)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class FastClient(paho.Client):
    """paho's client with buffered reads, pre-connected sockets and batched PUBACKs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        require_compatible(self)  # before our own names are set: they must not be paho's
        self._rbuf = b""
        self._rpos = 0
        self._prepared: socket.socket | None = None
        self.on_publish_packet: PublishHandler | None = None
        self.holding = False  # set while the driver does not read: take_publishes stops

    def use_socket(self, sock: socket.socket) -> None:
        """The connected socket the next `reconnect()` speaks MQTT on."""
        self._prepared = sock

    def _create_socket(self) -> Any:
        sock, self._prepared = self._prepared, None
        if sock is None:
            raise ConnectionError("no connected socket prepared")
        self._rbuf, self._rpos = b"", 0
        return sock

    def _sock_recv(self, bufsize: int) -> bytes:
        buf, pos = self._rbuf, self._rpos
        if pos >= len(buf):
            sock = self._sock
            if sock is None:
                raise ConnectionError("not connected")
            try:
                buf = sock.recv(READ_CHUNK)
            except ssl.SSLWantReadError as err:
                raise BlockingIOError from err
            except ssl.SSLWantWriteError as err:
                self._call_socket_register_write()
                raise BlockingIOError from err
            if not buf:
                return b""  # the broker closed the connection
            self._rbuf, pos = buf, 0
            self._last_bytes_received = paho.time_func()  # for paho's keepalive check
        end = pos + bufsize
        self._rpos = end
        return buf[pos:end]

    def _packet_read(self) -> MQTTErrorCode:
        if self.take_publishes(1):
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return super()._packet_read()

    def take_publish(self) -> bool:
        """Hand a whole QoS 0/1 PUBLISH waiting in the buffer to on_publish_packet, if one
        waits and paho is not in the middle of a packet (MQTT 5 goes paho's way)."""
        return self.take_publishes(1) == 1

    def take_publishes(self, limit: int = -1) -> int:
        """Hand each whole QoS 0/1 PUBLISH waiting in the buffer to on_publish_packet, in
        order, until one is not whole, `holding` is set or `limit` were handed (-1: no limit),
        unless paho is in the middle of a packet (MQTT 5 goes paho's way); how many were
        handed. One call for a buffer of them: a call and its checks a message cost about
        0.1 µs."""
        handler = self.on_publish_packet
        if (
            handler is None
            or self._in_packet["command"] != 0
            or self._protocol == MQTTProtocolVersion.MQTTv5
        ):
            return 0
        taken = 0
        while taken != limit and not self.holding:
            buf, pos = self._rbuf, self._rpos
            size = len(buf)
            if pos >= size:
                break
            header = buf[pos]
            if header & 0xF6 not in PUBLISH_QOS01:
                break
            at, length, shift = pos + 1, 0, 0
            while True:  # remaining length: 1 to 4 bytes, 7 bits each
                if at >= size or shift > 21:
                    return taken
                byte = buf[at]
                at += 1
                length |= (byte & 0x7F) << shift
                if byte < 0x80:
                    break
                shift += 7
            end = at + length
            if end > size or length < 2:
                break  # not all here yet (paho reads it in parts), or malformed
            topic_end = at + 2 + ((buf[at] << 8) | buf[at + 1])
            qos = (header >> 1) & 1
            payload_at = topic_end + 2 * qos
            if topic_end == at + 2 or payload_at > end:
                break  # paho reports the malformed packet
            try:
                topic = buf[at + 2 : topic_end].decode()
            except UnicodeDecodeError:
                break
            mid = (buf[topic_end] << 8) | buf[topic_end + 1] if qos else 0
            self._rpos = end
            handler(topic, buf[payload_at:end], qos, mid, bool(header & 1))
            taken += 1
        return taken

    @property
    def buffered(self) -> bool:
        """Whether bytes already read (by us or inside TLS) wait to be parsed."""
        if self._rpos < len(self._rbuf):
            return True
        sock = self._sock
        return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0

    def drop(self) -> None:
        """Close the socket at once, without DISCONNECT (the broker publishes the will)."""
        self._sock_close()

    def queue_pubacks(self, packets: bytes) -> None:
        """Queue several PUBACKs (concatenated) as one write."""
        self._packet_queue(PUBACK_COMMAND, packets, 0, 0)


class LoopDriver:
    """Registers a FastClient's socket with the running loop and drives paho's three loops."""

    def __init__(self, client: FastClient, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self._loop = loop
        self._sock: Any = None
        self._reading = False
        self._misc: asyncio.TimerHandle | None = None
        client.on_socket_open = self._opened
        client.on_socket_close = self._closed
        client.on_socket_register_write = self._want_write
        client.on_socket_unregister_write = self._no_write

    @property
    def paused(self) -> bool:
        return self.client.holding  # the client stops taking PUBLISHes while it holds

    def pause(self) -> None:
        """Stop reading the socket: the broker keeps what it has not sent (back-pressure)."""
        self.client.holding = True
        self._stop_reading()

    def resume(self) -> None:
        self.client.holding = False
        if self._sock is not None:
            self._start_reading()
            self._loop.call_soon(self._readable)  # bytes read before the pause

    def _opened(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._sock = sock
        if not self.client.holding:
            self._start_reading()
        self._misc = self._loop.call_later(MISC_EVERY, self._tick)

    def _closed(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._stop_reading()
        self._loop.remove_writer(sock)
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None
        self._sock = None

    def _want_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._loop.add_writer(sock, self._writable)

    def _no_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._loop.remove_writer(sock)

    def _start_reading(self) -> None:
        if not self._reading and self._sock is not None:
            self._loop.add_reader(self._sock, self._readable)
            self._reading = True

    def _stop_reading(self) -> None:
        if self._reading and self._sock is not None:
            self._loop.remove_reader(self._sock)
        self._reading = False

    def _readable(self) -> None:
        client = self.client
        # Whole PUBLISH packets in the buffer go straight to their handler; one loop_read
        # parses any other packet (or reads the socket); go on while whole packets wait.
        while self._sock is not None and not client.holding:
            if client.take_publishes():
                continue
            if client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS or not client.buffered:
                return

    def _writable(self) -> None:
        self.client.loop_write()

    def _tick(self) -> None:
        self._misc = None
        if self._sock is None:
            return
        self.client.loop_misc()
        if self._sock is not None:
            self._misc = self._loop.call_later(MISC_EVERY, self._tick)
