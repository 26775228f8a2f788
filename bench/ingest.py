"""Ingest throughput: messages committed per second, every acknowledgement after commit.

Measures, in one run:
  * the ingest core in process (codec + group commit + acknowledgement), SQLite and PostgreSQL,
    for a few batch sizes, with sources handing in one message at a time, both by callback
    (offer + done-callback, as MQTT and CoAP sources do) and by awaiting (a coroutine per
    message, as the HTTP source does);
  * the same through HTTP (POST /api/v1/ingest, one message per request) against a
    `fieldbridge run` subprocess, on SQLite and PostgreSQL;
  * the reference the issue names: raw SQLite inserting rows in 100-row transactions.

Run: .venv/bin/python bench/ingest.py   (about 2-3 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import final_line, free_port, print_table, throwaway_pg
from fieldbridge.codecs.http_json import decode
from fieldbridge.ingest import Ingest
from fieldbridge.model import Outcome
from fieldbridge.runtime import tune_gc
from fieldbridge.store import open_store, parse_store_url
from fieldbridge.store.migrate import upgrade

DEVICES = 100


def payload(n: int) -> bytes:
    return orjson.dumps(
        {
            "device": f"dev-{n % DEVICES}",
            "readings": {"temperature": 20 + (n % 100) / 10},
            "id": f"m-{n}",
        }
    )


def raw_sqlite_rows_per_s(path: Path, rows: int, batch: int = 100) -> float:
    """The reference: plain sqlite3 inserts in `batch`-row transactions, WAL, synchronous=FULL."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, device TEXT, at REAL, value REAL)")
    data = [(f"dev-{i % DEVICES}", time.time(), i / 10) for i in range(batch)]
    started = time.perf_counter()
    for _ in range(rows // batch):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO t (device, at, value) VALUES (?, ?, ?)", data)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return rows // batch * batch / elapsed


async def core(url: str, total: int, batch: int, mode: str) -> float:
    """Messages/s through Ingest, every acknowledgement after commit.

    mode "callback": the source hands each message to `offer` and acknowledges in the future's
    done-callback, keeping to the in-flight bound (how MQTT and CoAP sources work).
    mode "await": 2,000 concurrent coroutines each `await submit(...)` one message at a time
    (how the HTTP source works: one task per request).
    """
    upgrade(parse_store_url(url))
    payloads = [payload(n) for n in range(total)]
    tune_gc()
    async with open_store(url) as store, Ingest(store, batch_size=batch) as ingest:
        started = time.perf_counter()
        if mode == "callback":
            await _by_callback(ingest, payloads)
        else:
            feed = iter(payloads)

            async def source() -> None:
                for body in feed:
                    await ingest.submit("bench", body, decode)

            await asyncio.gather(*(source() for _ in range(2000)))
        elapsed = time.perf_counter() - started
        stored = await store.head_id()
    assert stored == total, f"stored {stored} of {total}"
    return total / elapsed


async def _by_callback(ingest: Ingest, payloads: list[bytes]) -> None:
    done = asyncio.get_running_loop().create_future()
    left = len(payloads)

    def acknowledged(result: asyncio.Future[Outcome]) -> None:
        nonlocal left
        result.result()  # raises if the store failed: the benchmark must not count it
        left -= 1
        if not left:
            done.set_result(None)

    for body in payloads:
        if not ingest.has_room:
            await ingest.wait_for_room()
        ingest.offer("bench", body, decode).add_done_callback(acknowledged)
    await done


class Client:
    """A minimal HTTP/1.1 keep-alive client: the load generator must not be the bottleneck."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def run(self, bodies: list[bytes], acked: list[int]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = "POST /api/v1/ingest HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        for body in bodies:
            writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            if status_line.split()[1] == b"200":
                acked[0] += 1
        writer.close()


async def http(url: str, total: int, connections: int) -> tuple[float, int]:
    """Requests/s (one message each) against `fieldbridge run` in a subprocess."""
    port = free_port()
    env = {
        **os.environ,
        "FIELDBRIDGE_STORE__URL": url,
        "FIELDBRIDGE_HTTP__LISTEN": f"127.0.0.1:{port}",
        "FIELDBRIDGE_LOG__LEVEL": "warning",
        "FIELDBRIDGE_SOURCES": '{"mqtt": []}',  # no file, but not the default run's MQTT sources
    }
    exe = str(Path(sys.executable).with_name("fieldbridge"))
    proc = await asyncio.create_subprocess_exec(exe, "run", env=env)
    try:
        await _wait_port(port)
        bodies = [payload(n) for n in range(total)]
        per = total // connections
        acked = [0]
        started = time.perf_counter()
        await asyncio.gather(
            *(Client(port).run(bodies[i * per : (i + 1) * per], acked) for i in range(connections))
        )
        elapsed = time.perf_counter() - started
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 15)
    return acked[0] / elapsed, acked[0]


async def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError("fieldbridge did not start listening")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000, help="per in-process run")
    parser.add_argument("--http-requests", type=int, default=30_000, help="per HTTP run")
    parser.add_argument("--connections", type=int, default=64, help="HTTP client connections")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        reference = raw_sqlite_rows_per_s(work / "raw.db", 500_000)
        rows: list[list[object]] = []
        headline = 0.0
        for mode in ("callback", "await"):
            for batch in (100, 500, 2000):
                db = work / f"core-{mode}-{batch}.db"
                rate = uvloop.run(core(f"sqlite:///{db}", args.messages, batch, mode))
                rows.append([f"ingest core, {mode}", "sqlite", batch, args.messages, rate])
                if batch == 500 and mode == "callback":
                    headline = rate
        for mode in ("callback", "await"):
            for batch in (500, 2000):
                with throwaway_pg() as pg:
                    rate = uvloop.run(core(pg, args.messages // 2, batch, mode))
                rows.append([f"ingest core, {mode}", "postgresql", batch, args.messages // 2, rate])
        http_db = f"sqlite:///{work / 'http.db'}"
        rate, acked = uvloop.run(http(http_db, args.http_requests, args.connections))
        rows.append(["HTTP, 1 msg/request", "sqlite", 500, acked, rate])
        with throwaway_pg() as pg:
            rate, acked = uvloop.run(http(pg, args.http_requests, args.connections))
        rows.append(["HTTP, 1 msg/request", "postgresql", 500, acked, rate])
    print_table(
        "Messages committed per second (every acknowledgement after commit)",
        ["path", "store", "batch", "messages", "msg/s"],
        rows,
    )
    print_table(
        "Reference",
        ["what", "rows/s"],
        [["raw SQLite, 100-row transactions, WAL, synchronous=FULL", reference]],
    )
    print(
        f"\nheadline: ingest core (callback) on SQLite, batch 500: {headline:,.0f} msg/s "
        f"(goal >= 50,000); {headline / reference:.3f} of raw SQLite's row rate"
    )
    final_line("ingest", headline, "msg/s", reference, headline / reference)


if __name__ == "__main__":
    main()
