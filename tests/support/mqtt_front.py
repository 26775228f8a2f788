"""A TCP front for Mosquitto that makes it authenticate ThingsBoard-style (token as username,
no password) and tells its subscribers which device token published what.

Hand-written (no library does this): it parses the client's MQTT 3.1.1 or 5 packets only far
enough to (1) answer CONNACK 4 to an empty username as ThingsBoard does, and add the
password the fake gave that token to CONNECT (Mosquitto's password file cannot hold users
without a password; an unknown token gets a password no user has, so Mosquitto itself
answers CONNACK 5), and (2) prefix PUBLISH topics under `v1/devices/me/` with
`tb/<token>/`. Everything from the broker passes through unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Mapping

CONNECT, PUBLISH = 0x10, 0x30
CONNACK_BAD_CREDENTIALS = bytes([0x20, 2, 0, 4])
NO_SUCH_PASSWORD = "-no-such-token-"
DEVICE_TOPICS = b"v1/devices/me/"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


async def _packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    header = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
    return header, await reader.readexactly(length)


def _connect(body: bytes, passwords: Mapping[str, str]) -> tuple[str, bytes]:
    """The username of a CONNECT, and the CONNECT with the token's password set (a CONNECT
    with a will is read as MQTT 3.1.1 lays it out: neither client here sends one)."""
    name_len = int.from_bytes(body[0:2], "big")
    at = 2 + name_len + 1
    flags = body[at]
    pos = at + 3  # after name, level, flags, keepalive
    if body[at - 1] == 5:  # MQTT 5: the CONNECT properties follow (length as a varint)
        length, shift = 0, 0
        while True:
            byte = body[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
        pos += length
    head = bytearray(body[:pos])
    fields: list[bytes] = []
    count = 1 + (2 if flags & 0x04 else 0) + (1 if flags & 0x80 else 0) + (1 if flags & 0x40 else 0)
    for _ in range(count):
        size = int.from_bytes(body[pos : pos + 2], "big")
        fields.append(body[pos + 2 : pos + 2 + size])
        pos += 2 + size
    user = fields[1 + (2 if flags & 0x04 else 0)].decode() if flags & 0x80 else ""
    kept = fields[: 1 + (2 if flags & 0x04 else 0) + (1 if flags & 0x80 else 0)]
    password = passwords.get(user, NO_SUCH_PASSWORD).encode()
    head[at] = flags | 0x40
    return user, bytes(head) + b"".join(_string(f) for f in kept) + _string(password)


def _publish(header: int, body: bytes, token: str) -> bytes:
    size = int.from_bytes(body[0:2], "big")
    topic = body[2 : 2 + size]
    if topic.startswith(DEVICE_TOPICS):
        topic = f"tb/{token}/".encode() + topic
    return _string(topic) + body[2 + size :]


class MqttFront:
    """Listens on 127.0.0.1:`port` in a thread of its own, forwards to the broker's port."""

    def __init__(self, port: int, broker_port: int, passwords: Mapping[str, str]) -> None:
        self.port = port
        self.broker_port = broker_port
        self.passwords = dict(passwords)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> None:
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._client, "127.0.0.1", self.port), self._loop
        )
        self._server = started.result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            header, body = await _packet(reader)
            if header & 0xF0 != CONNECT:
                return
            token, connect = _connect(body, self.passwords)
            if not token:
                writer.write(CONNACK_BAD_CREDENTIALS)
                await writer.drain()
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.broker_port)
        except (OSError, asyncio.IncompleteReadError, IndexError, UnicodeDecodeError):
            writer.close()
            return
        up_writer.write(bytes([header]) + _varint(len(connect)) + connect)
        down = asyncio.ensure_future(self._pipe(up_reader, writer))
        try:
            while True:
                header, body = await _packet(reader)
                if header & 0xF0 == PUBLISH:
                    body = _publish(header, body, token)
                up_writer.write(bytes([header]) + _varint(len(body)) + body)
                await up_writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            down.cancel()
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
