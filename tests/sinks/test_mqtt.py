"""The MQTT sink in a real fieldbridge run: a Redis stream on a real redis-server published to a
real Mosquitto with the mqtt-handler preset (the seed's payload, last_id, enabled, interval),
the json and smartcitizen presets, and QoS 0."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_until
from tests.support.mqtt_broker import Mosquitto, Watcher, watching
from tests.support.processes import FieldbridgeProcess
from tests.support.redis_server import RedisServer

STREAM = "measurement:values"
IDENTITY = {
    "device_uuid": "4f1c0de",
    "device_type": "raspberrypi4-64",
    "app_id": "1234",
    "app_name": "sensors",
}
VALUES = "balena/4f1c0de/values"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "mosquitto") as running:
        yield running


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as server:
        yield server


def handler_service(
    workdir: Path,
    broker: Mosquitto,
    redis_server: RedisServer,
    journal: str = "entry",
    **sink: Any,
) -> FieldbridgeProcess:
    source = {
        "name": "edge",
        "url": redis_server.url,
        "device": IDENTITY["device_uuid"],
        "journal": journal,
    }
    options: dict[str, Any] = {
        "name": "uplink",
        "preset": "mqtt-handler",
        "topic": "balena/%(device_uuid)s/values",
        "broker": {"url": broker.url},
        "identity": IDENTITY,
        "redis": {"url": redis_server.url},
    }
    options.update(sink)
    return FieldbridgeProcess(
        workdir, sources={"redis_stream": [source]}, sinks={"mqtt": [options]}
    )


def items(watcher: Watcher) -> list[dict[str, str]]:
    return [item for payload in watcher.payloads(VALUES) for item in json.loads(payload)]


def test_the_seeds_payload_and_last_id_after_each_publish(
    tmp_path: Path, broker: Mosquitto, redis_server: RedisServer
) -> None:
    r = redis_server.client()
    with (
        watching(broker.port, VALUES) as watcher,
        handler_service(tmp_path / "svc", broker, redis_server) as process,
    ):
        process.start()
        sent: list[tuple[str, dict[str, str]]] = []
        for n in range(40):
            fields = {"temperature_celsius": f"{20 + n / 10:.1f}", "state": "ok", "n": str(n)}
            sent.append((r.xadd(STREAM, fields), fields))
            if n % 10 == 9:
                # After each publish the key names the last entry it carried, "(" first.
                wait_until(lambda n=n: len(items(watcher)) == n + 1, f"{n + 1} entries published")
                assert r.get("mqtt_sender:last_id") == "(" + items(watcher)[-1]["_id"]
    got = items(watcher)
    assert [item["_id"] for item in got] == [entry_id for entry_id, _ in sent]
    for item, (entry_id, fields) in zip(got, sent, strict=True):
        # The seed's exact shape: _id, the four identity keys, then every field as a string.
        assert list(item) == [
            "_id",
            "_device_uuid",
            "_device_type",
            "_app_id",
            "_app_name",
            *fields,
        ]
        assert item == {
            "_id": entry_id,
            "_device_uuid": "4f1c0de",
            "_device_type": "raspberrypi4-64",
            "_app_id": "1234",
            "_app_name": "sensors",
            **fields,
        }
    assert r.get("mqtt_sender:last_id") == "(" + sent[-1][0]


def test_enabled_0_stops_sending_and_interval_is_honoured(
    tmp_path: Path, broker: Mosquitto, redis_server: RedisServer
) -> None:
    r = redis_server.client()
    with (
        watching(broker.port, VALUES) as watcher,
        handler_service(tmp_path / "svc", broker, redis_server) as process,
    ):
        process.start()
        r.xadd(STREAM, {"n": "0"})
        wait_until(lambda: len(items(watcher)) == 1, "the first entry published")
        r.set("mqtt_sender:enabled", "0")
        wait_until(
            lambda: any(s["state"] == "paused" for s in process.sinks_status()),
            "the sink paused by mqtt_sender:enabled",
        )
        for n in range(1, 6):
            r.xadd(STREAM, {"n": str(n)})
        wait_until(
            lambda: process.query("SELECT count(*) FROM journal")[0][0] == 6, "all six stored"
        )
        time.sleep(2.5)  # the sink looks at the key every second: it must stay silent
        assert len(items(watcher)) == 1
        r.set("mqtt_sender:interval", "3")
        r.set("mqtt_sender:enabled", "1")
        wait_until(lambda: len(items(watcher)) == 6, "the held five published at once")
        # Interval 3 s: entries added now wait for the next send, at least 3 s after the last.
        published_at = time.monotonic()
        for n in range(6, 9):
            r.xadd(STREAM, {"n": str(n)})
        wait_until(lambda: len(items(watcher)) == 9, "the next three published")
        assert time.monotonic() - published_at > 2.0
        assert len(watcher.payloads(VALUES)) == 3  # one message per send
    assert [item["n"] for item in items(watcher)] == [str(n) for n in range(9)]


@pytest.mark.parametrize("journal", ["entry", "batch"])
def test_json_and_smartcitizen_presets_at_qos_0_and_1(
    tmp_path: Path, broker: Mosquitto, redis_server: RedisServer, journal: str
) -> None:
    """Either journal shape: a batch message's readings are made from its payload."""
    r = redis_server.client()
    source = {"name": "edge", "url": redis_server.url, "device": "kit-7", "journal": journal}
    sinks = {
        "mqtt": [
            {"name": "plain", "broker": {"url": broker.url}, "qos": 0, "topic": "out/{device}"},
            {
                "name": "sck",
                "preset": "smartcitizen",
                "broker": {"url": broker.url},
                "tokens": {"kit-7": "a1b2c3"},
                "sensor_ids": {"battery": 10, "temperature": 55},
            },
        ]
    }
    with (
        watching(broker.port, "#") as watcher,
        FieldbridgeProcess(
            tmp_path / "svc", sources={"redis_stream": [source]}, sinks=sinks
        ) as process,
    ):
        process.start()
        entry = r.xadd(STREAM, {"battery": "87", "temperature": "21.5", "label": "x"})
        wait_until(lambda: watcher.payloads("out/kit-7"), "the json message")
        wait_until(lambda: watcher.payloads("device/sck/a1b2c3/readings"), "the sck message")
    at = int(entry.split("-")[0]) / 1000
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at))
    millis = entry.split("-")[0][-3:]
    stamp = f"{when}.{millis}000Z" if millis != "000" else f"{when}Z"
    plain = json.loads(watcher.payloads("out/kit-7")[0])
    assert plain["device"] == "kit-7" and plain["source"] == "edge"
    assert plain["time"] == stamp
    assert [(x["quantity"], x["value"]) for x in plain["readings"]] == [
        ("battery", 87.0),
        ("temperature", 21.5),
    ]
    sck = json.loads(watcher.payloads("device/sck/a1b2c3/readings")[0])
    assert sck == {
        "data": [
            {
                "recorded_at": stamp,
                "sensors": [{"id": 10, "value": 87.0}, {"id": 55, "value": 21.5}],
            }
        ]
    }


@pytest.mark.parametrize("given_by", ["mqtt_sender:interval", "INTERVAL_SECONDS"])
def test_the_interval_waits_between_cycles_not_between_batches(
    tmp_path: Path, broker: Mosquitto, redis_server: RedisServer, given_by: str
) -> None:
    """A backlog goes out batch after batch in one cycle (the seed sent it in one message);
    the interval (the Redis key, or the sink's setting the preset takes INTERVAL_SECONDS to)
    then counts before the next cycle."""
    r = redis_server.client()
    sink: dict[str, Any] = {"batch_size": 200}
    if given_by == "mqtt_sender:interval":
        r.set("mqtt_sender:interval", "30")
    else:
        sink["interval"] = 30.0
    pipe = r.pipeline(transaction=False)
    for n in range(2000):
        pipe.xadd(STREAM, {"n": str(n)})
    pipe.execute()
    with (
        watching(broker.port, VALUES) as watcher,
        handler_service(tmp_path / "svc", broker, redis_server, **sink) as process,
    ):
        process.start()
        # Ten batches of 200: with 30 s between batches this would take 4.5 minutes.
        wait_until(lambda: len(items(watcher)) == 2000, "the backlog in one cycle", timeout=30)
        assert len(watcher.payloads(VALUES)) == 10
        r.xadd(STREAM, {"n": "2000"})
        # The next cycle is 30 s after the last send: the new entry waits for it.
        wait_until(
            lambda: process.query("SELECT count(*) FROM journal")[0][0] == 2001, "it is stored"
        )
        time.sleep(2.0)  # well within the interval: nothing is sent
        assert len(items(watcher)) == 2000
    assert [item["n"] for item in items(watcher)] == [str(n) for n in range(2000)]


@pytest.mark.parametrize("journal", ["entry", "batch"])
def test_entries_up_to_last_id_are_not_published_again(
    tmp_path: Path, broker: Mosquitto, redis_server: RedisServer, journal: str
) -> None:
    """A restart between a PUBACK (last_id written right after it) and the cursor write reads
    a batch again: what last_id shows published is left out; a replay later sends it all."""
    r = redis_server.client()
    ids = [r.xadd(STREAM, {"n": str(n)}) for n in range(10)]
    r.set("mqtt_sender:last_id", "(" + ids[6])
    with (
        watching(broker.port, VALUES) as watcher,
        handler_service(tmp_path / "svc", broker, redis_server, journal) as process,
    ):
        process.start()
        wait_until(lambda: r.get("mqtt_sender:last_id") == "(" + ids[-1], "the rest published")
        assert [item["_id"] for item in items(watcher)] == ids[7:]
        done = process.cli("sinks", "replay", "uplink", "--from-id", "1", "--no-wait")
        assert done.returncode == 0, done.stderr
        wait_until(lambda: len(items(watcher)) == 13, "the replay")
    assert [item["_id"] for item in items(watcher)] == ids[7:] + ids


@pytest.mark.parametrize(("journal", "batch_size"), [("entry", 500), ("batch", 20)])
def test_a_backlog_of_100000_goes_out_in_bounded_batches_with_flat_memory(
    tmp_path: Path, broker: Mosquitto, redis_server: RedisServer, journal: str, batch_size: int
) -> None:
    """Either journal shape (batch: 20 messages of up to 500 entries per send, as the
    mqtt-handler preset has it)."""
    from tests.support.rss import rss_mb

    total = 100_000
    r = redis_server.client()
    with (
        watching(broker.port, VALUES) as watcher,
        handler_service(
            tmp_path / "svc", broker, redis_server, journal, batch_size=batch_size
        ) as process,
    ):
        process.start()
        assert process.pid is not None
        r.xadd(STREAM, {"warmup": "1"})
        wait_until(lambda: len(watcher.payloads(VALUES)) == 1, "the warm-up entry published")
        started_mb = rss_mb(process.pid)
        pipe = r.pipeline(transaction=False)
        for n in range(total):
            pipe.xadd(STREAM, {"temperature_celsius": "20.5", "humidity": "40", "n": str(n)})
            if n % 5000 == 4999:
                pipe.execute()
        pipe.execute()
        peak = [started_mb]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.2):
                peak.append(rss_mb(process.pid or 0))

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            wait_until(
                lambda: sum(len(json.loads(p)) for p in watcher.payloads(VALUES)) == total + 1,
                "the whole backlog published",
                timeout=240,
            )
        finally:
            stop.set()
            sampler.join()
        last = r.xrevrange(STREAM, count=1)[0][0]
        wait_until(lambda: r.get("mqtt_sender:last_id") == "(" + last, "last_id at the end")
    sizes = [len(json.loads(p)) for p in watcher.payloads(VALUES)[1:]]
    assert max(sizes) <= 500  # never the whole backlog in one message
    assert max(peak) - started_mb < 60, (started_mb, max(peak))
