"""Edge mode: a 200,000-entry Redis stream backlog published to Mosquitto at QoS 1.

Measures, in one run, against a redis-server and a Mosquitto of its own (free ports):
  * fieldbridge: `fieldbridge run` (subprocess, SQLite) with a Redis stream source and an MQTT
    sink configured as `--preset mqtt-handler` does (a journal message per XREAD batch of
    500, the seed's JSON list of at most 500 entries, every PUBACK before the cursor and
    mqtt_sender:last_id move). Started on a stream of one entry and waited for until it has
    published it (so its start-up is not timed, as the bare loop's is not); the backlog is
    filled beside the stream and renamed onto it in one step; timed from the RENAME until
    last_id names the last entry;
  * the ceiling: a bare redis-py + paho loop doing the same publish (XRANGE 500 after the
    last id, the same JSON list, QoS 1, wait for PUBACK, SET last_id), as the seed would with
    a batch limit, timed the same way.

Run: .venv/bin/python bench/redis_to_mqtt.py   (about a minute on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))
from tests.support.mqtt_broker import Mosquitto
from tests.support.processes import FieldbridgeProcess
from tests.support.redis_server import RedisServer
from tests.support.rss import cpu_seconds, peak_mb

from common import final_line, print_table

STREAM = "measurement:values"
IDENTITY = {"device_uuid": "bench", "device_type": "x86", "app_id": "1", "app_name": "bench"}
BATCH = 500
BACKLOG = "bench:backlog"  # filled beside the stream, then renamed onto it in one step


def fill(server: RedisServer, entries: int, stream: str = STREAM) -> str:
    r = server.client()
    pipe = r.pipeline(transaction=False)
    for n in range(entries):
        fields = {"temperature_celsius": f"{20 + n % 100 / 10:.1f}", "humidity": "41", "n": str(n)}
        pipe.xadd(stream, fields)
        if n % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()
    return str(r.xrevrange(stream, count=1)[0][0])


def bare_loop(server: RedisServer, broker: Mosquitto, last: str) -> float:
    """The ceiling: XRANGE, the same list, QoS 1 publish, PUBACK, SET last_id; in turn."""
    r = server.client()
    mqtt = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-bare")
    mqtt.connect("127.0.0.1", broker.port)
    mqtt.loop_start()
    started = time.perf_counter()
    position = "-"
    while True:
        rows = r.xrange(STREAM, position, "+", count=BATCH)
        if not rows:
            break
        items = [
            {
                "_id": entry_id,
                "_device_uuid": IDENTITY["device_uuid"],
                "_device_type": IDENTITY["device_type"],
                "_app_id": IDENTITY["app_id"],
                "_app_name": IDENTITY["app_name"],
                **fields,
            }
            for entry_id, fields in rows
        ]
        info = mqtt.publish("bench/bare/values", json.dumps(items).encode(), qos=1)
        info.wait_for_publish(30)
        position = "(" + rows[-1][0]
        r.set("bare_sender:last_id", position)
    elapsed = time.perf_counter() - started
    mqtt.disconnect()
    mqtt.loop_stop()
    assert position == "(" + last, (position, last)
    return elapsed


def fieldbridge(
    workdir: Path, server: RedisServer, broker: Mosquitto, entries: int
) -> tuple[float, float]:
    # As `fieldbridge run --preset mqtt-handler` configures them.
    source = {
        "name": "edge",
        "url": server.url,
        "device": "bench",
        "batch_size": BATCH,
        "journal": "batch",
    }
    sink = {
        "name": "uplink",
        "preset": "mqtt-handler",
        "topic": "bench/fieldbridge/values",
        "batch_size": 20,
        "broker": {"url": broker.url},
        "identity": IDENTITY,
        "redis": {"url": server.url, "prefix": "fb_sender"},
    }
    r = server.client()
    r.delete(STREAM)
    sentinel = r.xadd(STREAM, {"n": "-1"})
    with FieldbridgeProcess(
        workdir,
        sources={"redis_stream": [source]},
        sinks={"mqtt": [sink]},
        log={"level": "warning"},
    ) as process:
        process.start()
        # Started, connected and past its first publish: the bare loop is timed from its
        # first XRANGE too, with its connections open.
        wait_for(r, "(" + str(sentinel))
        last = fill(server, entries, BACKLOG)
        assert process.pid is not None
        cpu_before = cpu_seconds(process.pid)
        started = time.perf_counter()
        r.rename(BACKLOG, STREAM)  # the whole backlog at once; wakes the blocked XREAD
        wait_for(r, "(" + last)
        elapsed = time.perf_counter() - started
        used = cpu_seconds(process.pid) - cpu_before
        peak = peak_mb(process.pid)
    per_entry = used / entries * 1e6
    print(f"fieldbridge used {used:.1f} CPU s in {elapsed:.1f} s: {per_entry:.1f} us/entry")
    return elapsed, peak


def wait_for(r: Any, last_id: str, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while r.get("fb_sender:last_id") != last_id:
        if time.monotonic() > deadline:
            raise SystemExit(f"fieldbridge did not publish up to {last_id} in {timeout:.0f} s")
        time.sleep(0.005)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with Mosquitto(work / "mosquitto") as broker, RedisServer(work / "redis") as server:
            fill_started = time.perf_counter()
            last = fill(server, args.entries)
            fill_s = time.perf_counter() - fill_started
            bare_s = bare_loop(server, broker, last)
            fb_s, peak = fieldbridge(work / "fb", server, broker, args.entries)
    rate, ceiling = args.entries / fb_s, args.entries / bare_s
    print_table(
        f"{args.entries:,}-entry Redis stream backlog to Mosquitto at QoS 1 ({BATCH} per message)",
        ["publisher", "s", "entries/s", "of ceiling", "peak RSS"],
        [
            ["bare redis-py + paho loop (ceiling)", bare_s, ceiling, "-", "-"],
            [
                "fieldbridge (stream -> store -> sink)",
                fb_s,
                rate,
                f"{rate / ceiling:.2f}",
                f"{peak:.0f} MB",
            ],
        ],
    )
    print(
        f"\nbacklog written in {fill_s:.0f} s; fieldbridge's time includes the commit of every "
        "batch to SQLite before it is sent, not its start-up"
    )
    final_line("redis_to_mqtt", rate, "entries/s", ceiling, rate / ceiling)


if __name__ == "__main__":
    main()
