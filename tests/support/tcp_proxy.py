"""A TCP proxy on 127.0.0.1 that can stop passing bytes (a hung store) and start again."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from types import TracebackType

POLL = 0.1  # seconds a pump waits for bytes before it looks at the freeze flag again


class FreezableProxy:
    """Forwards every connection to `upstream`; `freeze()` stops every byte both ways.

    Frozen, it keeps every connection open and accepts new ones, but reads nothing (the
    kernel's buffers fill and TCP keeps acknowledging, as with a wedged proxy or NAT box) and
    opens no connection upstream; bytes read just before the freeze are held, not dropped.
    `thaw()` resumes all of it. Threads, not asyncio: the tests that use it are synchronous,
    and a socket pair per thread keeps the pumps trivially simple.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._thawed = threading.Event()
        self._thawed.set()
        self._closed = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.accepted = 0
        self.first_accepted: float | None = None  # time.monotonic() of the first connection

    def freeze(self) -> None:
        self._thawed.clear()

    def thaw(self) -> None:
        self._thawed.set()

    def __enter__(self) -> FreezableProxy:
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closed = True
        self._thawed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()

    def _keep(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            if self.first_accepted is None:
                self.first_accepted = time.monotonic()
            self._keep(client)
            threading.Thread(
                target=self._connect, args=(client,), name="proxy-conn", daemon=True
            ).start()

    def _connect(self, client: socket.socket) -> None:
        self._thawed.wait()
        if self._closed:
            return
        try:
            server = socket.create_connection(self.upstream, timeout=5.0)
        except OSError:
            client.close()
            return
        server.settimeout(None)
        self._keep(server)
        for src, dst in ((client, server), (server, client)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not self._closed:
                self._thawed.wait()
                readable, _, _ = select.select([src], [], [], POLL)
                if not readable:
                    continue
                data = src.recv(65536)
                self._thawed.wait()  # read just before a freeze: held until the thaw
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
        # ValueError: the other direction's pump closed this socket (its fd is -1 now).
        except (OSError, ValueError):
            with contextlib.suppress(OSError):
                dst.close()
