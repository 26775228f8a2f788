"""The HTTP server under hostile clients: slow heads and bodies, too many connections, hang-ups."""

from __future__ import annotations

import asyncio
import logging
import re
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import eventually, wait_until
from tests.support.processes import FieldbridgeProcess
from tests.support.rss import idle_spy
from tests.support.web import cli_token
from tests.web.test_http_api import sample, serve

SLOW_CLIENTS = 1500  # issue 10: this many half-sent heads locked out everyone
OPEN_FILES = 1024  # the common default of `ulimit -n`
SERVED_WITHIN = 10.0  # seconds a new client may wait while the slow ones are open
PARTIAL_HEAD = b"POST /api/v1/ingest HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
READING = {"device": "d1", "readings": {"t": 21.5}}
WAIT = 15.0  # seconds; only guards against a hang


@pytest.fixture
def many_files() -> Iterator[None]:
    """This test process may open SLOW_CLIENTS sockets and more (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = SLOW_CLIENTS + 512
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"needs an open-files hard limit of {wanted}, have {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def slow_heads(port: int, n: int, *, resets_allowed: bool = False) -> list[socket.socket]:
    """`n` connections that each send part of a request head and never the rest.

    A server out of descriptors accepts and closes at once (uvloop), so with `resets_allowed`
    a connection reset or refused on the way is kept as an attacker that got nowhere.
    """
    socks = []
    try:
        for _ in range(n):
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
            except ConnectionError:
                if not resets_allowed:
                    raise
                continue
            socks.append(sock)
            try:
                sock.sendall(PARTIAL_HEAD)
            except ConnectionError:
                if not resets_allowed:
                    raise
    except BaseException:
        close_all(socks)
        raise
    return socks


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


def served(process: FieldbridgeProcess) -> tuple[int, int]:
    """GET /healthz and one ingest POST from new clients: their statuses."""
    with httpx.Client(timeout=SERVED_WITHIN) as client:
        health = client.get(f"{process.base_url}/healthz").status_code
        posted = client.post(process.ingest_url, json=READING).status_code
    return health, posted


def metrics(process: FieldbridgeProcess) -> str:
    return httpx.get(f"{process.base_url}/metrics", timeout=WAIT).text


def test_1500_slow_heads_under_ulimit_1024_do_not_lock_out_new_clients(
    tmp_path: Path, many_files: None
) -> None:
    """Each of the 1,500 stays open on the attackers' side; the server keeps at most
    http.max_connections (512) of them, closing the one that waited longest for each newcomer,
    so it never runs out of its 1,024 file descriptors. The next test shows the same attack
    succeeding with the guard turned off."""
    with FieldbridgeProcess(tmp_path / "guarded", open_files=OPEN_FILES) as process:
        process.start()
        slow = slow_heads(process.port, SLOW_CLIENTS)
        try:
            started = time.monotonic()
            assert served(process) == (200, 200)
            print(f"served in {time.monotonic() - started:.2f} s beside {SLOW_CLIENTS} slow heads")
            text = metrics(process)
        finally:
            close_all(slow)
        output = process.output()
    closed = sum(
        sample(text, "fieldbridge_http_connections_closed_total", reason=reason) or 0
        for reason in ("evicted", "header_timeout")  # timeouts too, on a very slow machine
    )
    assert closed >= SLOW_CLIENTS - 512
    open_now = sample(text, "fieldbridge_http_connections")
    assert open_now is not None and open_now <= 512
    assert "Traceback" not in output
    assert "out of system resource" not in output  # never ran out of file descriptors


def test_without_the_guard_1500_slow_heads_lock_out_new_clients(
    tmp_path: Path, many_files: None
) -> None:
    """The check that the test above proves something: the same attack, guard turned off.

    The service holds 1,024 descriptors, all in use, and cannot accept the new client: under
    uvloop (libuv) the kernel connection is accepted and closed at once (the client sees the
    server disconnect without an answer); under asyncio's own loop it would wait in the listen
    backlog. Either way it is not served."""
    off = {"header_timeout_s": 0, "body_timeout_s": 0, "max_connections": 1_000_000}
    with FieldbridgeProcess(tmp_path / "open", http=off, open_files=OPEN_FILES) as process:
        process.start()
        slow = slow_heads(process.port, SLOW_CLIENTS, resets_allowed=True)
        try:
            with pytest.raises(httpx.TransportError):
                httpx.get(f"{process.base_url}/healthz", timeout=3.0)
        finally:
            close_all(slow)
        # Once the attackers hang up, the service serves again.
        wait_until(lambda: served(process) == (200, 200), "a client served after the attack")


# --- deadlines and the cap, on an in-process service -----------------------------------------


async def read_all(reader: asyncio.StreamReader) -> bytes:
    """What the server sends until it closes the connection."""
    return await asyncio.wait_for(reader.read(), WAIT)


async def test_an_unfinished_head_gets_408_after_header_timeout_s(tmp_path: Path) -> None:
    async with serve(tmp_path, http={"header_timeout_s": 1}) as running:
        port = running.service.http_port
        slow_reader, slow_writer = await asyncio.open_connection("127.0.0.1", port)
        silent_reader, silent_writer = await asyncio.open_connection("127.0.0.1", port)
        slow_writer.write(PARTIAL_HEAD)
        answer = await read_all(slow_reader)
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert b"http.header_timeout_s" in answer
        assert await read_all(silent_reader) == b""  # asked nothing, closed without an answer
        text = await running.metrics()
        assert (
            sample(text, "fieldbridge_http_connections_closed_total", reason="header_timeout") == 2
        )
        for writer in (slow_writer, silent_writer):
            writer.close()


async def test_a_stalled_body_gets_408_and_its_bytes_are_released(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "fieldbridge.web")
    async with serve(tmp_path, http={"body_timeout_s": 1}) as running:
        reader, writer = await asyncio.open_connection("127.0.0.1", running.service.http_port)
        writer.write(PARTIAL_HEAD + b"Content-Length: 100000\r\n\r\n" + b"[" * 412)

        async def reserved() -> bool:
            return sample(await running.metrics(), "fieldbridge_ingest_in_flight_bytes") == 100000

        await eventually(reserved, "the body's bytes reserved while it is read")
        answer = await read_all(reader)
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert b"http.body_timeout_s" in answer
        text = await running.metrics()
        assert sample(text, "fieldbridge_ingest_in_flight_bytes") == 0
        assert sample(text, "fieldbridge_http_connections_closed_total", reason="body_timeout") == 1
        assert sample(text, "fieldbridge_http_client_disconnects_total") == 0  # we closed it
        writer.close()
        assert (await running.post(READING)).status_code == 200
        assert len(await running.store.read_journal(0, 10)) == 1  # the stalled body: nothing
    assert (
        "client 127.0.0.1: body not complete within 1 s (http.body_timeout_s); closed in the "
        "middle of its body (412 of 100000 bytes); nothing stored"
    ) in caplog.text


async def test_the_spy_stream_outlives_both_deadlines(tmp_path: Path) -> None:
    http = {"header_timeout_s": 0.5, "body_timeout_s": 0.5}
    async with serve(tmp_path, http=http) as running:
        async with running.client.stream("GET", "/api/v1/spy") as stream:
            assert stream.status_code == 200
            lines = stream.aiter_lines()
            assert '"hello"' in await anext(lines)
            # Nothing may happen in this window: the stream outlives both deadlines.
            await asyncio.sleep(1.5)
            assert (await running.post(READING)).status_code == 200
            line = await asyncio.wait_for(anext(lines), WAIT)
            assert '"accepted"' in line
        text = await running.metrics()
        assert not sample(text, "fieldbridge_http_connections_closed_total", reason="body_timeout")


async def test_a_head_over_64_kib_gets_431(tmp_path: Path) -> None:
    async with serve(tmp_path) as running:
        reader, writer = await asyncio.open_connection("127.0.0.1", running.service.http_port)
        writer.write(PARTIAL_HEAD + b"X-Padding: " + b"a" * 70_000 + b"\r\n")
        assert (await read_all(reader)).startswith(b"HTTP/1.1 431 ")
        writer.close()
        assert (await running.post(READING)).status_code == 200


async def test_beyond_max_connections_the_longest_waiting_goes_else_503(tmp_path: Path) -> None:
    async with serve(tmp_path, http={"max_connections": 3}) as running:
        port = running.service.http_port
        # running.client keeps one connection of the three, idle between requests.
        assert (await running.client.get("/healthz")).status_code == 200
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        assert (await running.client.get("/healthz")).status_code == 200
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=WAIT) as other:
            assert (await other.get("/healthz")).status_code == 200  # made room: one idle went
        assert await read_all(idle_reader) == b""  # ... the one that waited longest
        idle_writer.close()

        # Three spies are busy, not waiting: a fourth connection is refused.
        async with running.client.stream("GET", "/api/v1/spy") as first:
            assert first.status_code == 200
            others = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
            for _, writer in others:
                auth = running.client.headers["authorization"]
                head = f"GET /api/v1/spy HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\n\r\n"
                writer.write(head.encode())
            for reader, _ in others:
                assert (await reader.readline()).startswith(b"HTTP/1.1 200 ")
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            refused = await read_all(reader)
            assert refused.startswith(b"HTTP/1.1 503 ")
            assert b"retry-after: 1" in refused
            assert b"http.max_connections" in refused
            for _, w in [*others, (reader, writer)]:
                w.close()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=WAIT) as late:

            async def admitted() -> bool:
                try:
                    return (await late.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(admitted, "a client served once the spies left")
        text = await running.metrics()
        assert sample(text, "fieldbridge_http_connections_closed_total", reason="refused")


# --- clients that hang up (issue 10, point 12) -------------------------------------------------

GONE = re.compile(
    r"INFO .*client 127\.0\.0\.1 went away in the middle of its body \((\d+) of 100000 bytes\); "
    r"nothing stored"
)
HANG_UPS = 200


def test_clients_that_hang_up_mid_body_are_one_info_line_each(tmp_path: Path) -> None:
    with FieldbridgeProcess(tmp_path / "gone") as process:
        process.start()
        for _ in range(HANG_UPS):
            with socket.create_connection(("127.0.0.1", process.port), timeout=WAIT) as sock:
                sock.sendall(PARTIAL_HEAD + b"Content-Length: 100000\r\n\r\n" + b"[" * 412)
        spy = idle_spy(
            process.port, cli_token(process.config_path)
        )  # a watcher that hangs up while its stream is written
        spy.close()
        with httpx.Client(timeout=WAIT) as client:
            assert client.post(process.ingest_url, json=READING).status_code == 200

        def counted() -> str | None:
            text = metrics(process)
            gone = sample(text, "fieldbridge_http_client_disconnects_total")
            return text if gone == HANG_UPS else None

        text = wait_until(counted, f"{HANG_UPS} disconnects counted", timeout=WAIT)
        assert sample(text, "fieldbridge_ingest_in_flight_bytes") == 0
        output = process.output()
        stored = process.query("SELECT count(*) FROM journal")[0][0]
    assert len(GONE.findall(output)) == HANG_UPS
    assert "Traceback" not in output
    assert " ERROR " not in output and "WARNING" not in output
    assert stored == 1  # only the normal POST
