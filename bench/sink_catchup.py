"""InfluxDB sink catch-up: a backlog of 1,000,000 readings written to a real influxd once it is up.

Measures, in one run, against an influxd 1.x of its own (free port, data in a temp folder):
  * fieldbridge: `fieldbridge run` (subprocess, SQLite) with one InfluxDB sink and no source;
    the store is filled with --messages messages of five readings each while influxd is
    stopped (the sink backs off), then influxd starts; points/s from influxd answering until
    the sink's stored cursor (read from the store every 50 ms) reaches the journal's end,
    and fieldbridge's peak RSS sampled every 100 ms through the whole run (fill, back-off,
    catch-up);
  * the ceiling: a bare batched writer posting the same lines (rendered beforehand by the
    sink's own renderer) in requests of the same size, gzipped, with the same number in flight,
    to the same influxd (another database), timed until the last 204;
  * the CPU seconds per point of fieldbridge and influxd during the catch-up, and of influxd
    under the ceiling (from /proc): on 2 cores the two processes share, the ratio can reach
    0.5 only if fieldbridge spends no more CPU per point than influxd.

Run: .venv/bin/python bench/sink_catchup.py   (about 2-3 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))
from tests.support.influxd import Influxd
from tests.support.processes import FieldbridgeProcess

from common import final_line, free_port, print_table
from fieldbridge.codecs import http_json
from fieldbridge.ingest import Ingest
from fieldbridge.model import Accepted
from fieldbridge.sinks.influxdb import plan_requests
from fieldbridge.sinks.influxdb_lines import Renderer
from fieldbridge.sinks.influxdb_settings import InfluxDBSettings
from fieldbridge.store import open_store, parse_store_url
from fieldbridge.store.migrate import upgrade
from mqtt_to_influx import RssSampler

QUANTITIES = ("VBat", "count", "RSSI", "temp", "hum")
DEVICES = 100
T0 = 1_767_225_600.0  # 2026-01-01 UTC; message n is measured at T0 + n // DEVICES
DB, CEILING_DB = "catchup", "ceiling"


def message(n: int) -> bytes:
    body = {
        "device": f"node-{n % DEVICES:03d}",
        "kind": "trapnet",
        "ts": T0 + n // DEVICES,
        "readings": {q: float((n + i) % 1000) / 10 for i, q in enumerate(QUANTITIES)},
        "id": f"m{n}",
    }
    return json.dumps(body).encode()


async def fill(url: str, count: int) -> int:
    """`count` messages through the real ingest path; the last journal id."""
    last = 0
    async with open_store(url) as store, Ingest(store) as feed:
        for start in range(0, count, 2000):
            outcomes = await asyncio.gather(
                *(
                    feed.submit("http", message(n), http_json.decode, {})
                    for n in range(start, min(count, start + 2000))
                )
            )
            for outcome in outcomes:
                assert isinstance(outcome, Accepted), outcome
                last = max(last, *outcome.ids)
    return last


async def prebuilt(url: str, settings: InfluxDBSettings) -> list[bytes]:
    """The journal's lines as request bodies, rendered and grouped as the sink does."""
    bodies: list[bytes] = []
    cursor = 0
    renderer = Renderer(settings.layout())
    async with open_store(url) as store:
        while entries := await store.read_journal(cursor, settings.batch_size, rows=True):
            rendered = renderer.texts(entries, {})
            for lane in plan_requests(
                rendered,
                settings.lines_per_request,
                settings.max_request_bytes,
                settings.max_in_flight,
            ):
                bodies.extend(request.body for request in lane)
            cursor = entries[-1].id
    return bodies


async def bare_writer(influx: Influxd, bodies: list[bytes], in_flight: int) -> float:
    """Seconds to post every body (gzipped beforehand) with `in_flight` requests at once."""
    zipped = [gzip.compress(body, compresslevel=1) for body in bodies]
    queue = list(reversed(zipped))
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    headers = {"Content-Encoding": "gzip", "Content-Type": "text/plain; charset=utf-8"}
    params = {"db": CEILING_DB, "precision": "ms"}
    async with httpx.AsyncClient(limits=limits, timeout=60.0, headers=headers) as client:

        async def worker() -> None:
            while queue:
                answer = await client.post(
                    f"{influx.url}/write", params=params, content=queue.pop()
                )
                if answer.status_code != 204:
                    raise RuntimeError(f"influxd answered {answer.status_code}: {answer.text}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        return time.perf_counter() - started


def stored_cursor(process: FieldbridgeProcess) -> int:
    """The sink's stored cursor, read from the store (read-only): a `sinks status` command
    per look would start a Python process each time, which on 2 cores slows the sink it
    watches and sees the end a second or so late."""
    rows = process.query("SELECT cursor FROM sink_state WHERE name = ?", ("influx",))
    return int(rows[0][0]) if rows else 0


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds a process has used so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def count_points(influx: Influxd, database: str) -> int:
    return sum(
        int(influx.query(database, f'SELECT count("value") FROM "{q}"')[0][1]) for q in QUANTITIES
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000, help="of five readings each")
    args = parser.parse_args()
    readings = args.messages * len(QUANTITIES)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        influx = Influxd(work / "influxd")
        influx.create_database(DB)
        influx.create_database(CEILING_DB)
        influx.stop()
        sink = {"name": "influx", "url": influx.url, "database": DB, "max_backoff": 0.2}
        process = FieldbridgeProcess(
            work / "fb", sinks={"influxdb": [sink]}, port=free_port(), log={"level": "warning"}
        )
        url = f"sqlite:///{process.db_path}"
        upgrade(parse_store_url(url))
        with process:
            process.start()
            assert process.pid is not None
            rss = RssSampler(process.pid)
            fill_started = time.perf_counter()
            last = asyncio.run(fill(url, args.messages))
            fill_s = time.perf_counter() - fill_started
            influx.start()
            started = time.perf_counter()
            influxd_pid = influx.pid
            fb_cpu, influxd_cpu = cpu_seconds(process.pid), cpu_seconds(influxd_pid)
            while (cursor := stored_cursor(process)) < last:
                if not process.running:
                    raise RuntimeError(process.log_tail())
                time.sleep(0.05)
            catchup_s = time.perf_counter() - started
            fb_cpu = cpu_seconds(process.pid) - fb_cpu
            influxd_cpu = cpu_seconds(influxd_pid) - influxd_cpu
            peak = rss.stop()
        written = count_points(influx, DB)
        settings = InfluxDBSettings(**sink)
        bodies = asyncio.run(prebuilt(url, settings))
        ceiling_cpu = cpu_seconds(influxd_pid)
        bare_s = asyncio.run(bare_writer(influx, bodies, settings.max_in_flight))
        ceiling_cpu = cpu_seconds(influxd_pid) - ceiling_cpu
        ceiling_points = count_points(influx, CEILING_DB)
        influx.stop()
    rate, ceiling = readings / catchup_s, readings / bare_s
    print_table(
        f"catch-up of {readings:,} readings ({args.messages:,} messages) to influxd 1.x",
        ["writer", "points", "in influxd", "s", "points/s", "of ceiling", "peak RSS"],
        [
            ["bare batched writer (ceiling)", readings, ceiling_points, bare_s, ceiling, "-", "-"],
            [
                "fieldbridge InfluxDB sink",
                readings,
                written,
                catchup_s,
                rate,
                f"{rate / ceiling:.2f}",
                f"{peak:.0f} MB",
            ],
        ],
    )
    print(
        f"\nstore filled in {fill_s:.0f} s while influxd was down; {len(bodies)} requests of "
        f"<= {settings.lines_per_request} lines, {settings.max_in_flight} in flight, gzip; "
        f"cursor {cursor} of {last}"
    )
    per_point = 1e6 / readings
    print(
        f"CPU per point: catch-up fieldbridge {fb_cpu * per_point:.2f} µs, influxd "
        f"{influxd_cpu * per_point:.2f} µs; ceiling influxd {ceiling_cpu * per_point:.2f} µs"
    )
    final_line("sink_catchup", rate, "points/s", ceiling, rate / ceiling)


if __name__ == "__main__":
    main()
