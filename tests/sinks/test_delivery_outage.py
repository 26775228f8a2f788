"""A real `fieldbridge run` feeding ThingsBoard (the fake on a real Mosquitto) and a real influxd:
a trap network drives exactly the flagged devices' data to each, and both destinations down for
the whole ingest of 100,000 readings lose nothing once they are back, with memory flat."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_until
from tests.fakes.thingsboard import FakeThingsBoard
from tests.support.influxd import Influxd
from tests.support.mqtt_broker import Mosquitto, acknowledged, client
from tests.support.processes import FieldbridgeProcess
from tests.support.rss import rss_mb
from tests.support.trapnet_sim import TrapNetwork

TOKEN = "GwT0kenOutage"
DB = "aklc"
T0 = 1_764_800_000.0
QUANTITIES = ("VBat", "count", "RSSI", "temp", "hum")

pytestmark = pytest.mark.xdist_group("influxd")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as running:
        yield running


@pytest.fixture
def tb(tmp_path: Path) -> Iterator[FakeThingsBoard]:
    with FakeThingsBoard(tmp_path / "tb", gateway_tokens={TOKEN: "gw"}) as fake:
        yield fake
    assert fake.violations == [], "fieldbridge broke the ThingsBoard contract"


@pytest.fixture
def influx(tmp_path: Path) -> Iterator[Influxd]:
    with Influxd(tmp_path / "influxd") as server:
        server.create_database(DB)
        yield server


def service(
    workdir: Path,
    source: dict[str, Any],
    tb: FakeThingsBoard,
    influx: Influxd,
    route: dict[str, Any] | None = None,
) -> FieldbridgeProcess:
    route = route or {}
    sinks = {
        "thingsboard": [
            {"name": "tb", "url": tb.url, "token": TOKEN, "max_backoff": 1.0, **route.get("tb", {})}
        ],
        "influxdb": [
            {
                "name": "influx",
                "url": influx.url,
                "database": DB,
                "max_backoff": 1.0,
                **route.get("influx", {}),
            }
        ],
    }
    return FieldbridgeProcess(workdir, sources={"mqtt": [source]}, sinks=sinks)


def cursors_at_end(process: FieldbridgeProcess) -> bool:
    head = process.query("SELECT coalesce(max(id), 0) FROM journal")[0][0]
    return all(row["cursor"] == head for row in process.sinks_status())


def test_a_trap_network_reaches_only_the_flagged_devices(
    tmp_path: Path, broker: Mosquitto, tb: FakeThingsBoard, influx: Influxd
) -> None:
    source = {
        "name": "aklc",
        "url": broker.url,
        "client_id": "fieldbridge-trapnet-sinks",
        "topics": ["AKLC/#"],
        "qos": 1,
        "codec": "trapnet",
    }
    route = {"tb": {"route": {"flag": "thingsboard"}}, "influx": {"route": {"flag": "influx"}}}
    with service(tmp_path / "svc", source, tb, influx, route) as process:
        process.start()
        wait_until(lambda: "; subscribed to" in process.output(), "the source is subscribed")
        for args in (
            ("messagetypes", "add", "trap", "Catches:I", "VBat:F", "RSSI:I", "Site:S:tag"),
            ("devices", "add", "Trap1"),
            ("devices", "add", "Trap2"),
            ("devices", "add", "Trap3"),
            ("devices", "set", "Trap1", "--message-type", "trap"),
            ("devices", "set", "Trap1", "--flag", "influx=on", "--flag", "thingsboard=on"),
            ("devices", "set", "Trap2", "--flag", "influx=on"),
        ):
            done = process.cli(*args)
            assert done.returncode == 0, done.stderr
        with TrapNetwork(broker.port) as net:
            for n in range(5):  # one at a time: each at a measured time (ms) of its own
                net.relay("GW1", "Trap1", n, 3.7, -98, "Bayfield")
                net.publish("AKLC/Node/Trap2", {"NodeID": "Trap2", "VBat": 3.5 + n / 10})
                net.publish("AKLC/Node/Trap3", {"NodeID": "Trap3", "VBat": 3.0})
                net.wait_acknowledged()
                wait_until(
                    lambda n=n: process.query("SELECT count(*) FROM journal")[0][0] >= 3 * n + 3,
                    "stored",
                )
        wait_until(lambda: cursors_at_end(process), "both sinks at the journal's end")
    catches = influx.series(DB, 'SELECT "value" FROM "Catches" GROUP BY "device", "Site"')
    assert [(s["tags"]["device"], s["tags"]["Site"]) for s in catches] == [("Trap1", "Bayfield")]
    assert [row[1] for row in catches[0]["values"]] == [0.0, 1.0, 2.0, 3.0, 4.0]
    vbat = influx.series(DB, 'SELECT count("value") FROM "VBat" GROUP BY "device"')
    assert {s["tags"]["device"]: s["values"][0][1] for s in vbat} == {"Trap1": 5, "Trap2": 5}
    wait_until(lambda: len(tb.series("Trap1")) == 5, "Trap1's points in ThingsBoard")
    assert tb.series("Trap2") == {} and tb.series("Trap3") == {}
    assert {key for point in tb.series("Trap1").values() for key in point} == {
        "Catches",
        "VBat",
        "RSSI",
    }


def test_both_down_for_the_whole_ingest_of_100000_readings(
    tmp_path: Path, broker: Mosquitto, tb: FakeThingsBoard, influx: Influxd
) -> None:
    messages = 20_000  # of five readings each
    source = {
        "name": "bulk",
        "url": broker.url,
        "client_id": "fieldbridge-outage",
        "topics": ["bulk/+"],
        "qos": 1,
        "codec": "http-json",
    }
    tb.stop()
    influx.stop()
    with service(tmp_path / "svc", source, tb, influx) as process:
        process.start()
        wait_until(lambda: "; subscribed to" in process.output(), "the source is subscribed")
        assert process.pid is not None
        started_mb = rss_mb(process.pid)
        publisher = client(broker.port, "outage-publisher")
        sent = []
        for n in range(messages):
            readings = {q: float(n + i) for i, q in enumerate(QUANTITIES)}
            body = {"device": f"n{n % 50:02d}", "ts": T0 + n, "readings": readings, "id": f"m{n}"}
            sent.append(publisher.publish(f"bulk/{n % 50}", json.dumps(body), qos=1))
            if n % 2000 == 1999:
                wait_until(lambda: all(acknowledged(i) for i in sent), "the broker's PUBACKs")
        wait_until(
            lambda: process.query("SELECT count(*) FROM journal")[0][0] == messages,
            "every message stored",
            timeout=120,
        )
        publisher.disconnect()
        publisher.loop_stop()
        backlog_mb = rss_mb(process.pid)
        states = {row["name"]: row["state"] for row in process.sinks_status()}
        assert states == {"tb": "backoff", "influx": "backoff"}, states
        tb.restart()
        influx.start()
        wait_until(lambda: cursors_at_end(process), "both sinks caught up", timeout=180)
        caught_up_mb = rss_mb(process.pid)
    # Every reading in influxd exactly once, at its measured time, with its value.
    for i, quantity in enumerate(QUANTITIES):
        series = influx.series(DB, f'SELECT "value" FROM "{quantity}" GROUP BY "device"')
        assert len(series) == 50, quantity
        for one in series:
            device = int(one["tags"]["device"][1:])
            assert one["values"] == [
                [round((T0 + n) * 1000) * 1_000_000, float(n + i)]
                for n in range(device, messages, 50)
            ], (quantity, device)
    for device in range(50):
        name = f"n{device:02d}"
        wait_until(lambda name=name: len(tb.series(name)) == messages // 50, f"{name} in TB")
        series = tb.series(name)
        first = next(n for n in range(messages) if n % 50 == device)
        assert series[round((T0 + first) * 1000)] == {
            q: float(first + i) for i, q in enumerate(QUANTITIES)
        }
    # Memory stays flat: the backlog is on disk, and catching up reads it in batches.
    assert backlog_mb - started_mb < 40, (started_mb, backlog_mb)
    assert caught_up_mb - started_mb < 80, (started_mb, backlog_mb, caught_up_mb)
