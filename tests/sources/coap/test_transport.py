"""The CoAP message layer (sources/coap/transport.py) over raw UDP: pings, duplicates,
malformed datagrams, NON requests, and the bounded deduplication cache."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from pathlib import Path

import aiocoap
import pytest
from aiocoap.numbers.codes import Code

from fieldbridge.sources.coap.transport import CoapServer, Pipe
from tests.support.coap_harness import Harness, serve, wait_until
from tests.support.efento_sim import (
    ACK,
    CON,
    GET,
    NON,
    POST,
    RST,
    decode,
    encode,
    measurements,
    serial_bytes,
)

T0 = 1_700_000_000
SERIAL = serial_bytes(0x0707)


def raw_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


async def receive(sock: socket.socket, wait_s: float = 2.0) -> bytes | None:
    """The next datagram, or None when nothing comes within `wait_s` seconds."""

    def wait() -> bytes | None:
        sock.settimeout(wait_s)
        try:
            return sock.recv(2048)
        except TimeoutError:
            return None

    return await asyncio.to_thread(wait)


async def journal_count(h: Harness) -> int:
    rows = await h.store.db.fetchall("SELECT COUNT(*) FROM journal")
    return int(rows[0][0])


async def test_ping_and_unmatched_messages(tmp_path: Path) -> None:
    async with serve(tmp_path / "s.db") as h:
        with raw_socket() as sock:
            to = ("127.0.0.1", h.port)
            sock.sendto(bytes([0x40, 0]) + struct.pack(">H", 0x1234), to)  # empty CON: ping
            assert await receive(sock) == bytes([0x70, 0x00, 0x12, 0x34])  # RST, same mid
            # A CON response: this server asked nothing, so it is rejected.
            sock.sendto(encode(CON, 0x45, 0x1235, b"ab", ""), to)
            assert await receive(sock) == bytes([0x70, 0x00, 0x12, 0x35])
            # ACK, RST, an empty NON and a NON response: nothing to answer or cancel.
            sock.sendto(encode(ACK, 0, 0x1236, b"", ""), to)
            sock.sendto(encode(RST, 0, 0x1237, b"", ""), to)
            sock.sendto(encode(NON, 0, 0x1238, b"", ""), to)
            sock.sendto(encode(NON, 0x45, 0x1239, b"ab", ""), to)
            assert await receive(sock, 0.4) is None


async def test_malformed_con_gets_rst_and_malformed_non_nothing(tmp_path: Path) -> None:
    async with serve(tmp_path / "s.db") as h:
        with raw_socket() as sock:
            to = ("127.0.0.1", h.port)
            bad_option = b"\xf1x"  # option delta 15 is reserved (RFC 7252 §3.1)
            sock.sendto(bytes([0x40, POST]) + struct.pack(">H", 7) + bad_option, to)
            assert await receive(sock) == bytes([0x70, 0x00, 0x00, 0x07])
            # A token length of 9..15 is a format error too.
            sock.sendto(bytes([0x49, POST]) + struct.pack(">H", 8) + b"123456789", to)
            assert await receive(sock) == bytes([0x70, 0x00, 0x00, 0x08])
            sock.sendto(bytes([0x50, POST]) + struct.pack(">H", 9) + bad_option, to)  # NON
            sock.sendto(b"\x40\x02", to)  # too short to have a message id
            sock.sendto(bytes([0x80, POST, 0, 10]), to)  # CoAP version 2
            assert await receive(sock, 0.4) is None
            # The server is still serving.
            sock.sendto(encode(CON, GET, 11, b"t", "t"), to)
            answer = await receive(sock)
            assert answer is not None
            assert (decode(answer).mtype, decode(answer).code) == (ACK, 0x45)


async def test_duplicate_con_gets_the_same_ack_and_is_stored_once(tmp_path: Path) -> None:
    async with serve(tmp_path / "s.db") as h:
        with raw_socket() as sock:
            to = ("127.0.0.1", h.port)
            message = encode(CON, POST, 0x4242, b"tok1", "m", measurements(SERIAL, T0))
            sock.sendto(message, to)
            first = await receive(sock)
            assert first is not None
            answer = decode(first)
            assert (answer.mtype, answer.code, answer.mid, answer.token) == (
                ACK,
                0x41,
                0x4242,
                b"tok1",
            )
            for _ in range(2):
                sock.sendto(message, to)
                assert await receive(sock) == first
            assert await journal_count(h) == 1
            rows = await h.store.db.fetchall("SELECT COUNT(*) FROM readings")
            assert rows[0][0] == 10


async def test_non_requests(tmp_path: Path) -> None:
    async with serve(tmp_path / "s.db") as h:
        with raw_socket() as sock:
            to = ("127.0.0.1", h.port)
            frame = encode(NON, POST, 0x5151, b"n1", "m", measurements(SERIAL, T0))
            sock.sendto(frame, to)
            sock.sendto(frame, to)  # a duplicate within NON_LIFETIME: ignored
            assert await receive(sock, 0.4) is None  # No-Response: a stored NON gets nothing

            async def stored() -> bool:
                return await journal_count(h) == 1

            await wait_until(stored, "the NON frame is committed")
            await asyncio.sleep(0.2)
            assert await journal_count(h) == 1
            # /t answers a NON too: a NON answer with the token and a new message id.
            sock.sendto(encode(NON, GET, 0x5152, b"n2", "t"), to)
            data = await receive(sock)
            assert data is not None
            answer = decode(data)
            assert (answer.mtype, answer.code, answer.token) == (NON, 0x45, b"n2")
            assert answer.mid != 0x5152 and len(answer.payload) == 4


async def test_dedup_cache_is_bounded() -> None:
    """Beyond `max_remembered` entries the oldest is forgotten: its mid is a new request."""
    seen: list[int] = []

    def handler(pipe: Pipe) -> None:
        seen.append(pipe.request.mid)
        pipe.add_response(aiocoap.Message(code=Code.CREATED, payload=os.urandom(4)))

    server = await CoapServer.listen("127.0.0.1", 0, handler, max_remembered=3)
    try:
        port = server.sockname[1]
        with raw_socket() as sock:
            for mid in (1, 2, 3, 2, 4, 1):
                sock.sendto(encode(CON, POST, mid, b"k", "m"), ("127.0.0.1", port))
                data = await receive(sock)
                assert data is not None and decode(data).mid == mid
    finally:
        await server.close()
    # 2 again: a duplicate; 1 again after 4 more entries: forgotten, so handled again.
    assert seen == [1, 2, 3, 4, 1]


async def test_ipv6_wildcard_takes_ipv4_too() -> None:
    def handler(pipe: Pipe) -> None:
        pipe.add_response(aiocoap.Message(code=Code.CONTENT, payload=b"ok"))

    server = await CoapServer.listen("::", 0, handler)
    try:
        port = server.sockname[1]
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.sendto(encode(CON, GET, 5, b"v", "x"), (host, port))
                data = await receive(sock)
                assert data is not None and decode(data).payload == b"ok"
    finally:
        await server.close()
