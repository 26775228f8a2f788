"""The edge device under faults: fieldbridge (`run --preset mqtt-handler`), the broker and
Redis each killed or stopped several times while a producer adds measurements. Every stream
entry reaches the subscriber at least once, in order, none skipped; duplicates are counted.
And a 100,000-entry backlog goes out in bounded publishes with flat memory."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import redis

from tests.conftest import wait_until
from tests.support.mqtt_broker import Mosquitto, client
from tests.support.processes import FieldbridgeProcess
from tests.support.redis_server import RedisServer
from tests.support.rss import peak_mb, rss_mb

pytestmark = pytest.mark.slow

UUID = "edge-7f3a"
VALUES = f"devices/{UUID}/values"
STREAM = "measurement:values"


def seed_env(broker: Mosquitto, redis_server: RedisServer, **extra: str) -> dict[str, str]:
    return {
        "REDIS_HOST": "127.0.0.1",
        "REDIS_PORT": str(redis_server.port),
        "REDIS_DB": "0",
        "MQTT_HOST": "127.0.0.1",
        "MQTT_PORT": str(broker.port),
        "MQTT_KEEPALIVE_SECONDS": "5",
        "MQTT_TOPIC_VALUES": "devices/%(device_uuid)s/values",
        "BALENA_DEVICE_UUID": UUID,
        "BALENA_DEVICE_TYPE": "raspberrypi4-64",
        "BALENA_APP_ID": "42",
        "BALENA_APP_NAME": "edge-test",
        "INTERVAL_SECONDS": "0.1",
        **extra,
    }


class Subscriber:
    """A persistent session (QoS 1, clean session off) on the values topic: what the broker
    took while it was down or restarting still arrives. Counts every entry id it sees."""

    def __init__(self, broker: Mosquitto) -> None:
        self.order: list[str] = []  # entry ids in arrival order, repeats included
        self.publishes = 0
        self.sizes: list[int] = []
        self.bad: list[str] = []
        self._lock = threading.Lock()
        self._client = client(broker.port, "values-subscriber", clean=False)
        self._client.on_message = self._message
        subscribed = threading.Event()
        self._client.on_subscribe = lambda *a: subscribed.set()
        self._client.subscribe(VALUES, 1)
        assert subscribed.wait(5)

    def _message(self, c: Any, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            items = json.loads(message.payload)
            ids = [item["_id"] for item in items]
            assert all(item["_device_uuid"] == UUID for item in items)
        except (ValueError, KeyError, TypeError, AssertionError) as exc:
            with self._lock:
                self.bad.append(f"{exc}: {message.payload[:100]!r}")
            return
        with self._lock:
            self.publishes += 1
            self.sizes.append(len(message.payload))
            self.order.extend(ids)

    def seen(self) -> set[str]:
        with self._lock:
            return set(self.order)

    def count(self) -> int:
        with self._lock:
            return len(self.order)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class Producer:
    """XADDs one measurement every few milliseconds whenever Redis is up; remembers the ids
    Redis acknowledged (on disk: appendfsync always)."""

    def __init__(self, redis_server: RedisServer, rate: float = 300.0) -> None:
        self.added: list[str] = []
        self._server = redis_server
        self._rate = rate
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        conn: redis.Redis | None = None
        while not self._stop.is_set():
            try:
                conn = conn or self._server.client()
                self.added.append(
                    conn.xadd(
                        STREAM, {"temperature_celsius": f"{20 + n % 50 / 10:.1f}", "n": str(n)}
                    )
                )
                n += 1
            except redis.RedisError:
                conn = None
                self._stop.wait(0.05)
                continue
            self._stop.wait(1 / self._rate)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "mosquitto") as running:
        yield running


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as server:
        yield server


def test_kill_fieldbridge_broker_and_redis_repeatedly(
    tmp_path: Path, broker: Mosquitto, redis_server: RedisServer
) -> None:
    subscriber = Subscriber(broker)
    producer = Producer(redis_server)
    process = FieldbridgeProcess(
        tmp_path / "fb",
        run_args=["--preset", "mqtt-handler"],
        env=seed_env(broker, redis_server),
        use_config=False,
    )
    faults: list[str] = []

    def progress(more: int = 100) -> None:
        """Let the producer add `more` entries and the subscriber see everything up to then."""
        target = len(producer.added) + more
        wait_until(lambda: len(producer.added) >= target, "the producer adding")
        upto = set(producer.added[:target])
        wait_until(lambda: upto <= subscriber.seen(), "the entries published", timeout=60)

    try:
        with process:
            process.start()
            producer.start()
            for round_ in range(3):
                progress()
                process.kill()  # SIGKILL, anywhere in a cycle
                faults.append(f"{round_}: fieldbridge killed")
                process.start()
                progress()
                broker.stop()  # between publishes or in the middle of one
                faults.append(f"{round_}: broker stopped")
                time.sleep(0.3)  # down for a moment while entries keep arriving in Redis
                broker.start()
                progress()
                redis_server.kill()  # SIGKILL: the source and last_id writes fail meanwhile
                faults.append(f"{round_}: Redis killed")
                time.sleep(0.3)
                redis_server.start()
            progress()
            producer.stop()
            # The stream is the truth: an XADD whose answer a Redis kill cut off is there too.
            stream = [entry_id for entry_id, _ in redis_server.client().xrange(STREAM)]
            assert set(producer.added) <= set(stream)
            wait_until(lambda: set(stream) <= subscriber.seen(), "every entry", timeout=60)
            wait_until(
                lambda: redis_server.client().get("mqtt_sender:last_id") == "(" + stream[-1],
                "last_id at the last entry",
            )
    finally:
        producer.stop()
        subscriber.close()
    order = subscriber.order
    assert not subscriber.bad, subscriber.bad[:3]
    seen_once: list[str] = list(dict.fromkeys(order))  # first arrivals, in order
    assert seen_once == stream, "an entry was skipped or came out of order"
    duplicates = sum(n - 1 for n in Counter(order).values())
    print(
        f"{len(stream)} entries, {len(faults)} faults, {subscriber.publishes} publishes, "
        f"{duplicates} duplicates"
    )
    # Duplicates come only from publishes the broker took before a fault stopped their
    # last_id write or PUBACK: at most a batch (500) per fault.
    assert duplicates <= 500 * len(faults), duplicates


def test_a_backlog_of_100000_entries_with_flat_memory(
    tmp_path: Path, broker: Mosquitto, redis_server: RedisServer
) -> None:
    producer = redis_server.client()
    total = 100_000
    for start in range(0, total, 10_000):
        pipe = producer.pipeline(transaction=False)
        for n in range(start, start + 10_000):
            pipe.xadd(
                STREAM, {"temperature_celsius": "20.3", "humidity_percent": "74", "n": str(n)}
            )
        pipe.execute()
    last = producer.xrevrange(STREAM, count=1)[0][0]
    subscriber = Subscriber(broker)
    process = FieldbridgeProcess(
        tmp_path / "fb",
        run_args=["--preset", "mqtt-handler"],
        env=seed_env(broker, redis_server),
        use_config=False,
    )
    try:
        with process:
            process.start()
            assert process.pid is not None
            started = rss_mb(process.pid)
            wait_until(
                lambda: producer.get("mqtt_sender:last_id") == "(" + last,
                "the backlog published",
                timeout=240,
            )
            peak = peak_mb(process.pid)
            wait_until(lambda: subscriber.count() >= total, "every entry received", timeout=60)
    finally:
        subscriber.close()
    assert len(subscriber.seen()) == total
    # Bounded publishes: a batch (500 entries) each, never the whole backlog at once.
    assert max(subscriber.sizes) < 262_144 and subscriber.publishes >= total // 500
    print(f"RSS at start {started:.0f} MB, peak {peak:.0f} MB")
    assert peak - started < 60, (started, peak)
