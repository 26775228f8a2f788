"""A TCP relay between fieldbridge and Mosquitto that counts the MQTT packets on the wire.

It shows what neither end reports: how many PUBACKs fieldbridge sent and when, and how many
PUBLISH packets the broker sent again (DUP flag) after a reconnect. It parses only MQTT's
fixed header (type, flags, remaining length) and forwards every byte unchanged.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections import Counter
from types import TracebackType

PUBLISH, PUBACK, PUBCOMP = 3, 4, 7


class MqttTap:
    """Listens on a free port; each client connection is relayed to 127.0.0.1:`upstream`."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._lock = threading.Lock()
        self.to_broker: Counter[int] = Counter()  # packet type -> count, client to broker
        self.to_client: Counter[int] = Counter()  # packet type -> count, broker to client
        self.redelivered = 0  # PUBLISH packets with DUP set, broker to client
        self.connections = 0
        self._open: list[socket.socket] = []
        self._closed = False

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def pubacks(self) -> int:
        with self._lock:
            return self.to_broker[PUBACK]

    def publishes(self) -> int:
        with self._lock:
            return self.to_client[PUBLISH]

    def cut(self) -> None:
        """Drop every relayed connection at once (a network failure)."""
        with self._lock:
            sockets, self._open = self._open, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                downstream, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                downstream.close()
                continue
            with self._lock:
                self.connections += 1
                self._open += [downstream, upstream]
            for source, target, to_broker in (
                (downstream, upstream, True),
                (upstream, downstream, False),
            ):
                threading.Thread(
                    target=self._pump, args=(source, target, to_broker), daemon=True
                ).start()

    def _pump(self, source: socket.socket, target: socket.socket, to_broker: bool) -> None:
        pending = b""
        try:
            while data := source.recv(65536):
                target.sendall(data)
                pending = self._count(pending + data, to_broker)
        except OSError:
            pass
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _count(self, data: bytes, to_broker: bool) -> bytes:
        """Count the whole packets in `data`; return the incomplete rest."""
        at = 0
        while True:
            if at >= len(data):
                return b""
            header, length, shift, end = data[at], 0, 0, at + 1
            while True:
                if end >= len(data):
                    return data[at:]
                byte = data[end]
                end += 1
                length |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    break
            if end + length > len(data):
                return data[at:]
            kind = header >> 4
            with self._lock:
                (self.to_broker if to_broker else self.to_client)[kind] += 1
                if not to_broker and kind == PUBLISH and header & 0x08:
                    self.redelivered += 1
            at = end + length

    def __enter__(self) -> MqttTap:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closed = True
        self._server.close()
        self.cut()
