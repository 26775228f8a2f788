"""paho-mqtt driven by the asyncio loop: reads, writes and timers without a thread.

Why paho-mqtt: with `manual_ack=True` the application, not the library, decides when a QoS 1
PUBACK leaves, which is what "acknowledged only after commit" needs (gmqtt's
`optimistic_acknowledgement=False` does the same but acknowledges when an async handler
returns, a task per message; aiomqtt wraps paho and measured 13k msg/s). paho is protocol only
here: the socket is registered with the event loop (paho's external-loop API: loop_read,
loop_write, loop_misc and the socket callbacks, as aiomqtt does), so a message goes from the
socket to ingest without a thread handoff.

Three private paho 2.x hooks are overridden, each for a measured reason (bare subscriber,
100-byte QoS 1 messages: 21k msg/s stock, 56k msg/s with all three):
  * `_sock_recv` reads 256 KiB at a time and serves paho's 1-byte header reads from that
    buffer; stock paho makes three recv() system calls per message.
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
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

READ_CHUNK = 256 * 1024
MISC_EVERY = 1.0  # seconds between paho's keepalive checks (PINGREQ, ping timeout)
PUBACK = struct.Struct("!BBH")  # fixed header 0x40, remaining length 2, packet id
PUBACK_COMMAND = 0x40


def puback(mid: int) -> bytes:
    """The 4-byte PUBACK of packet id `mid` (MQTT 3.1.1, and MQTT 5's success short form)."""
    return PUBACK.pack(PUBACK_COMMAND, 2, mid)


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
        self._rbuf = b""
        self._rpos = 0
        self._prepared: socket.socket | None = None

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
        end = pos + bufsize
        self._rpos = end
        return buf[pos:end]

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
        self._paused = False
        self._misc: asyncio.TimerHandle | None = None
        client.on_socket_open = self._opened
        client.on_socket_close = self._closed
        client.on_socket_register_write = self._want_write
        client.on_socket_unregister_write = self._no_write

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        """Stop reading the socket: the broker keeps what it has not sent (back-pressure)."""
        self._paused = True
        self._stop_reading()

    def resume(self) -> None:
        self._paused = False
        if self._sock is not None:
            self._start_reading()
            self._loop.call_soon(self._readable)  # bytes read before the pause

    def _opened(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._sock = sock
        if not self._paused:
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
        # One loop_read parses one packet; go on while whole packets wait in the buffer.
        while self._sock is not None and not self._paused:
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
