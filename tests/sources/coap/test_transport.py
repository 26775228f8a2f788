"""The CoAP message layer (sources/coap/transport.py) over raw UDP: pings, duplicates,
malformed datagrams, NON requests, the bounded deduplication cache, and separate responses."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from pathlib import Path

import aiocoap
from aiocoap.numbers.codes import Code

from fieldbridge.sources.coap.message import new_message
from fieldbridge.sources.coap.transport import ACK_TIMEOUT, MAX_RETRANSMIT, CoapServer, Pipe
from tests.conftest import eventually
from tests.support.coap_harness import Harness, serve
from tests.support.efento_sim import (
    ACK,
    CON,
    GET,
    NON,
    POST,
    RST,
    Answer,
    decode,
    encode,
    measurements,
    serial_bytes,
)
from tests.support.locks import sqlite_write_locked

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


async def test_payload_marker_without_payload_is_a_format_error(tmp_path: Path) -> None:
    """RFC 7252 §3: a marker followed by a zero-length payload is a message format error: RST
    for a CON, nothing for a NON, and nothing stored (it used to be taken as an empty /m)."""
    async with serve(tmp_path / "s.db") as h:
        with raw_socket() as sock:
            to = ("127.0.0.1", h.port)
            sock.sendto(encode(CON, POST, 0x0F01, b"m1", "m") + b"\xff", to)
            assert await receive(sock) == bytes([0x70, 0x00, 0x0F, 0x01])
            sock.sendto(encode(NON, POST, 0x0F02, b"m2", "m") + b"\xff", to)
            assert await receive(sock, 0.4) is None
            # An option value ending in 0xFF, with no payload after it, is no marker.
            sock.sendto(encode(CON, GET, 0x0F03, b"t\xff", "t", options={2048: b"\xff"}), to)
            data = await receive(sock)
            assert data is not None
            assert (decode(data).code, decode(data).mid) == (0x45, 0x0F03)
        assert await journal_count(h) == 0
        assert await h.store.list_quarantine() == []


async def test_unknown_critical_option_gets_4_02(tmp_path: Path) -> None:
    """RFC 7252 §5.4.1: a CON with an unrecognised critical (odd) option gets 4.02 Bad Option and
    is not processed; a NON one is rejected (ignored); elective (even) ones are ignored."""
    frame = measurements(SERIAL, T0)
    async with serve(tmp_path / "s.db") as h:
        with raw_socket() as sock:
            to = ("127.0.0.1", h.port)
            sock.sendto(encode(CON, POST, 0x0E01, b"o1", "m", frame, {2049: b"x"}), to)
            data = await receive(sock)
            assert data is not None
            answer = decode(data)
            assert (answer.mtype, answer.code_text, answer.mid, answer.token) == (
                ACK,
                "4.02",
                0x0E01,
                b"o1",
            )
            assert answer.payload == b"unknown critical option 2049"
            sock.sendto(encode(CON, GET, 0x0E02, b"o2", "t", options={65001: b""}), to)
            data = await receive(sock)
            assert data is not None and decode(data).code_text == "4.02"
            sock.sendto(encode(NON, POST, 0x0E03, b"o3", "m", frame, {2049: b"x"}), to)
            assert await receive(sock, 0.4) is None
            assert await journal_count(h) == 0
            # An elective option nobody knows is ignored: the frame is stored.
            sock.sendto(encode(CON, POST, 0x0E04, b"o4", "m", frame, {2048: b"x"}), to)
            data = await receive(sock)
            assert data is not None and decode(data).code_text == "2.01"
        assert await journal_count(h) == 1


async def test_an_odd_token_option_is_recognised(tmp_path: Path) -> None:
    """token_option may be odd (cloud_token_coap_option 1..64999): that critical option is the
    source's own, so it is acted on, not refused."""
    async with serve(tmp_path / "s.db", tokens=["s3cret"], token_option=2049) as h:
        with raw_socket() as sock:
            to = ("127.0.0.1", h.port)
            frame = measurements(SERIAL, T0)
            sock.sendto(encode(CON, POST, 0x0D01, b"k1", "m", frame, {2049: b"s3cret"}), to)
            data = await receive(sock)
            assert data is not None and decode(data).code_text == "2.01"
            sock.sendto(encode(CON, POST, 0x0D02, b"k2", "m", frame, {2051: b"s3cret"}), to)
            data = await receive(sock)
            assert data is not None and decode(data).code_text == "4.02"


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

            await eventually(stored, "the NON frame is committed")
            await asyncio.sleep(0.2)  # a window in which nothing may happen
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


def empty_ack(mid: int) -> bytes:
    return bytes([0x60, 0x00]) + struct.pack(">H", mid)


async def until_settled(server: CoapServer) -> None:
    async def settled() -> bool:
        return server.awaiting_ack == 0

    await eventually(settled, "no separate response waits for its ACK")


async def drain(sock: socket.socket) -> list[bytes]:
    """The datagrams already on their way (local UDP: within 0.1 s), read until none comes."""
    found = []
    while (data := await receive(sock, 0.1)) is not None:
        found.append(data)
    return found


async def test_late_answer_gets_empty_ack_then_separate_con_until_acked() -> None:
    """A CON answered after `separate_after`: an empty ACK, then the answer as a CON with a
    new message id and the request's token, sent again until the client ACKs it."""
    pipes: list[Pipe] = []

    def handler(pipe: Pipe) -> None:
        if pipe.request.token == b"fast":
            pipe.add_response(new_message(Code.CONTENT, b"at once"))
        else:
            pipes.append(pipe)  # answered later by the test

    server = await CoapServer.listen("127.0.0.1", 0, handler, separate_after=0.3, ack_timeout=0.3)
    try:
        to = ("127.0.0.1", server.sockname[1])
        with raw_socket() as sock:
            sent = time.monotonic()
            sock.sendto(encode(CON, POST, 0x0101, b"slow", "m", b"frame"), to)
            sock.sendto(encode(CON, GET, 0x0102, b"fast", "t"), to)
            fast = await receive(sock)
            assert fast is not None  # answered in time: piggy-backed, as ever
            assert decode(fast) == Answer(ACK, 0x45, 0x0102, b"fast", b"at once")
            assert await receive(sock) == empty_ack(0x0101)
            waited = time.monotonic() - sent
            assert 0.3 <= waited < ACK_TIMEOUT, f"empty ACK after {waited:.2f} s"
            pipes[0].add_response(new_message(Code.CREATED, b"stored"))
            first = await receive(sock)
            assert first is not None
            answer = decode(first)
            assert (answer.mtype, answer.code, answer.token, answer.payload) == (
                CON,
                0x41,
                b"slow",
                b"stored",
            )
            assert await receive(sock) == first  # not ACKed: the same CON again
            sock.sendto(encode(ACK, 0, answer.mid, b"", ""), to)
            await until_settled(server)
            # Copies sent before the ACK arrived (a slow test thread) are fine; after it, a
            # window in which nothing may come: the next retransmission was due within
            # 0.6-0.9 s, and the piggy-backed request must get no empty ACK late.
            assert set(await drain(sock)) <= {first}
            assert await receive(sock, 1.5) is None
    finally:
        await server.close()
    assert len(pipes) == 1


async def test_separate_response_is_given_up_after_max_retransmit() -> None:
    pipes: list[Pipe] = []
    server = await CoapServer.listen(
        "127.0.0.1", 0, pipes.append, separate_after=0.1, ack_timeout=0.05
    )
    try:
        to = ("127.0.0.1", server.sockname[1])
        with raw_socket() as sock:
            sock.sendto(encode(CON, POST, 0x0201, b"lost", "m"), to)
            assert await receive(sock) == empty_ack(0x0201)
            pipes[0].add_response(new_message(Code.INTERNAL_SERVER_ERROR, b"retry"))
            await until_settled(server)  # given up: within 31 waits of 0.05-0.075 s
            copies = await drain(sock)  # all sent before the server gave up
            assert len(copies) == 1 + MAX_RETRANSMIT
            assert len(set(copies)) == 1 and decode(copies[0]).code == 0xA0
    finally:
        await server.close()


async def test_rst_stops_a_separate_response() -> None:
    pipes: list[Pipe] = []
    server = await CoapServer.listen(
        "127.0.0.1", 0, pipes.append, separate_after=0.1, ack_timeout=0.3
    )
    try:
        to = ("127.0.0.1", server.sockname[1])
        with raw_socket() as sock:
            sock.sendto(encode(CON, POST, 0x0301, b"gone", "m"), to)
            assert await receive(sock) == empty_ack(0x0301)
            pipes[0].add_response(new_message(Code.CREATED))
            data = await receive(sock)
            assert data is not None and decode(data).mtype == CON
            sock.sendto(encode(RST, 0, decode(data).mid, b"", ""), to)  # no longer wanted
            await until_settled(server)
            # Copies sent before the RST arrived are fine; after it, a window in which nothing
            # may come: the next retransmissions were due within 0.3-0.45 and 0.9-1.35 s.
            assert set(await drain(sock)) <= {data}
            assert await receive(sock, 1.5) is None
    finally:
        await server.close()


async def test_request_retransmitted_after_the_empty_ack_gets_it_again() -> None:
    pipes: list[Pipe] = []
    server = await CoapServer.listen(
        "127.0.0.1", 0, pipes.append, separate_after=0.1, ack_timeout=0.3
    )
    try:
        to = ("127.0.0.1", server.sockname[1])
        request = encode(CON, POST, 0x0401, b"dup", "m", b"frame")
        with raw_socket() as sock:
            sock.sendto(request, to)
            assert await receive(sock) == empty_ack(0x0401)
            sock.sendto(request, to)  # the sensor missed the empty ACK
            assert await receive(sock) == empty_ack(0x0401)
            pipes[0].add_response(new_message(Code.CREATED))
            data = await receive(sock)
            assert data is not None and decode(data).mtype == CON
            sock.sendto(encode(ACK, 0, decode(data).mid, b"", ""), to)
            sock.sendto(request, to)  # after the answer, too: the exchange ended in an ACK
            assert await receive(sock) == empty_ack(0x0401)
            await until_settled(server)
    finally:
        await server.close()
    assert len(pipes) == 1  # handled once


async def test_request_retransmitted_during_a_store_stall_is_stored_once(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    async with serve(db, busy_timeout_ms=20_000, separate_after=0.3) as h:
        to = ("127.0.0.1", h.port)
        with raw_socket() as sock:
            warm = encode(CON, POST, 0x0500, b"warm", "m", measurements(serial_bytes(9), T0))
            sock.sendto(warm, to)  # opens the store's writer before the lock is taken
            assert await receive(sock) is not None
            request = encode(CON, POST, 0x0501, b"stal", "m", measurements(SERIAL, T0))
            with sqlite_write_locked(db):
                sock.sendto(request, to)
                assert await receive(sock) == empty_ack(0x0501)
                sock.sendto(request, to)  # the sensor retransmits anyway
                assert await receive(sock) == empty_ack(0x0501)
            data = await receive(sock, 10.0)
            assert data is not None
            answer = decode(data)
            assert (answer.mtype, answer.code, answer.token) == (CON, 0x41, b"stal")
            sock.sendto(encode(ACK, 0, answer.mid, b"", ""), to)
            sock.sendto(request, to)  # a late retransmission: the empty ACK, no new frame
            assert await receive(sock) == empty_ack(0x0501)
        assert await journal_count(h) == 2
        rows = await h.store.db.fetchall("SELECT COUNT(*) FROM readings")
        assert rows[0][0] == 20
