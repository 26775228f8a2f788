"""The MQTT sink's `smartcitizen` preset against a faithful fake of the Smart Citizen platform
(tests/fakes/smartcitizen.py) on a real Mosquitto: a real `fieldbridge run` takes readings of
several devices over HTTP and publishes them; the fake checks every message against
integrations.md §6 and stores what the platform would. Also a broker killed mid-run, and the
fake's own checks (it must catch what it claims to)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from fieldbridge.sinks.mqtt_settings import MqttSinkSettings
from tests.conftest import wait_until
from tests.fakes.smartcitizen import FakeSmartCitizen, Value
from tests.support.mqtt_broker import Mosquitto, client
from tests.support.processes import FieldbridgeProcess

T0 = 1_764_800_000.0  # 2025-12-03T22:13:20Z
KNOWN = {"battery": 10, "noise": 29, "humidity": 13, "temperature": 12, "light": 14}
SENSOR_IDS: dict[str, int | str] = {**KNOWN, "co2": 231}  # 231: not in the platform's table
Expected = dict[tuple[datetime, int], Value]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "mosquitto") as running:
        yield running


def service(workdir: Path, broker: Mosquitto, tokens: dict[str, str]) -> FieldbridgeProcess:
    sink = {
        "name": "sck",
        "preset": "smartcitizen",
        "broker": {"url": broker.url, "timeout_s": 5.0},
        "tokens": tokens,
        "sensor_ids": SENSOR_IDS,
        "batch_size": 50,
        "max_backoff": 1.0,
    }
    return FieldbridgeProcess(workdir, sinks={"mqtt": [sink]})


def at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def post(process: FieldbridgeProcess, messages: list[dict[str, Any]]) -> None:
    answer = httpx.post(process.ingest_url, json=messages, timeout=10.0)
    assert answer.status_code == 200, answer.text


def cursor_at_end(process: FieldbridgeProcess) -> bool:
    head = process.query("SELECT coalesce(max(id), 0) FROM journal")[0][0]
    return all(row["cursor"] == head for row in process.sinks_status())


def test_readings_of_several_kits_reach_the_platform_as_it_stores_them(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """kit-a (token from the settings) and kit-b (token from its device attribute) are known to
    the platform, kit-x's token is not, kit-d's is malformed; co2 (231) is not in the platform's
    sensor table and `label` has no sensor id. One kit-a message is two days ahead of now."""
    expected: dict[str, Expected] = {"a1b2c3": {}, "b4c5d6": {}}
    tokens = {"kit-a": "a1b2c3", "kit-b": "b4c5d6", "kit-x": "zz9x1q"}
    with (
        FakeSmartCitizen(broker.port, devices=["a1b2c3", "b4c5d6"]) as platform,
        service(tmp_path / "svc", broker, {"kit-a": "a1b2c3", "kit-x": "zz9x1q"}) as process,
    ):
        process.start()
        for device, token in (("kit-b", "b4c5d6"), ("kit-d", "Kit-D1")):
            added = process.cli("devices", "add", device, "--attr", f"smartcitizen_token={token}")
            assert added.returncode == 0, added.stderr
        # kit-d's token is not one the platform issues: refused here, not lost there unseen.
        post(process, [{"device": "kit-d", "ts": T0, "readings": {"battery": 1}, "id": "d"}])
        for n in range(6):
            ts = T0 + 60 * n + (0.5 if n % 2 else 0.0)  # whole seconds and fractions
            batch = []
            for device in ("kit-a", "kit-b", "kit-x"):
                values = {
                    "battery": 90 - n,
                    "noise": 40.25 + n,
                    "humidity": 55 + n / 4,
                    "temperature": -3.5 + n,
                    "light": 300 * n,
                    "co2": 410 + n,
                    "label": 7,
                }
                batch.append(
                    {"device": device, "ts": ts, "readings": values, "id": f"{device}-{n}"}
                )
                token = tokens[device]
                if token in expected:
                    for quantity, sid in KNOWN.items():
                        expected[token][(at(ts), sid)] = float(values[quantity])
            post(process, batch)
        future = time.time() + 2 * 86400
        post(process, [{"device": "kit-a", "ts": future, "readings": {"battery": 1}, "id": "f"}])
        wait_until(lambda: cursor_at_end(process), "the sink at the journal's end")
        for token, readings in expected.items():
            wait_until(lambda t=token, r=readings: platform.readings(t) == r, f"{token} stored")
        wait_until(lambda: platform.dropped["zz9x1q"] > 0, "kit-x's messages dropped")
        dead = process.query("SELECT body FROM dead_letters WHERE sink = 'sck' ORDER BY id")
    assert platform.violations == [], "fieldbridge broke the Smart Citizen contract"
    assert platform.dropped.keys() == {"zz9x1q"}
    assert platform.skipped_ids() == {("a1b2c3", "231"), ("b4c5d6", "231")}
    assert platform.stripped == 0 and platform.ingested.repeats == 0
    # kit-d's message and the one two days ahead are not sent (the platform would drop them
    # unseen): dead letters, with the reason.
    assert len(dead) == 2, dead
    assert "not a Smart Citizen token" in dead[0][0] and "more than 1 day" in dead[1][0], dead


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ({"qos": 0}, "QoS 1"),
        ({"tokens": {"kit": "A1B2C3"}}, "not a Smart Citizen device token"),
        ({"tokens": {"kit": "a1b2c3d"}}, "not a Smart Citizen device token"),
        ({"sensor_ids": {"co2": "co2_ext"}}, "takes text with a digit for a sensor id"),
        ({"sensor_ids": {"co2": "co₂"}}, "printable ASCII"),
        ({"sensor_ids": {"co2": -1}}, "not a sensor id"),
    ],
)
def test_settings_the_platform_would_drop_unseen_are_refused(
    override: dict[str, Any], problem: str
) -> None:
    values: dict[str, Any] = {"name": "sck", "preset": "smartcitizen", "sensor_ids": KNOWN}
    MqttSinkSettings(**values)  # the base is fine
    with pytest.raises(ValidationError, match=problem):
        MqttSinkSettings(**{**values, **override})


class Producer:
    """Posts one message per device every `every` seconds, at T0 + n seconds, until stopped."""

    def __init__(self, process: FieldbridgeProcess, devices: dict[str, str], every: float) -> None:
        self.expected: dict[str, Expected] = {token: {} for token in devices.values()}
        self.count = 0
        self._process = process
        self._devices = devices
        self._every = every
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=10.0) as http:
            while not self._stop.is_set():
                n = self.count
                ts = T0 + n
                batch = [
                    {"device": d, "ts": ts, "readings": {"battery": n % 100, "light": n * 1.5}}
                    for d in self._devices
                ]
                answer = http.post(self._process.ingest_url, json=batch)
                assert answer.status_code == 200, answer.text
                with self._lock:
                    for token in self._devices.values():
                        self.expected[token][(at(ts), 10)] = float(n % 100)
                        self.expected[token][(at(ts), 14)] = n * 1.5
                    self.count = n + 1
                self._stop.wait(self._every)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def posted(self) -> int:
        with self._lock:
            return self.count


def test_a_broker_killed_mid_run_loses_and_doubles_nothing_at_the_platform(
    tmp_path: Path, broker: Mosquitto
) -> None:
    devices = {"kit-a": "a1b2c3", "kit-b": "b4c5d6"}
    db = broker.workdir / "mosquitto.db"
    with (
        FakeSmartCitizen(broker.port, devices=devices.values()) as platform,
        service(tmp_path / "svc", broker, devices) as process,
    ):
        # SIGKILL keeps only what Mosquitto autosaved (every second): wait until its file holds
        # the platform's session, so the platform's subscription outlives the kill.
        subscribed = time.time()
        wait_until(lambda: db.exists() and db.stat().st_mtime > subscribed + 0.1, "an autosave")
        process.start()
        producer = Producer(process, devices, every=0.02)
        producer.start()
        try:

            def stored() -> int:
                return sum(len(platform.readings(t)) for t in devices.values())

            wait_until(lambda: stored() >= 200, "readings at the platform before the kill")
            broker.kill()  # SIGKILL, while fieldbridge publishes
            killed_at = producer.posted()
            wait_until(lambda: producer.posted() >= killed_at + 50, "readings taken meanwhile")
            broker.start()  # the same port, the same persistence directory
            resumed_at = producer.posted()
            wait_until(lambda: producer.posted() >= resumed_at + 50, "readings after the restart")
        finally:
            producer.stop()
        wait_until(lambda: cursor_at_end(process), "the sink at the journal's end", timeout=60)
        for token, readings in producer.expected.items():
            wait_until(lambda t=token, r=readings: platform.readings(t) == r, f"{token} stored")
    assert platform.violations == [], "fieldbridge broke the Smart Citizen contract"
    assert not platform.dropped and not platform.skipped
    # Each reading is stored once (the platform keys a data point by device, sensor and time);
    # a message the broker took but could not acknowledge before the kill is sent again.
    print(
        f"{producer.posted()} messages per kit, killed after {killed_at}, "
        f"{platform.messages} delivered, {platform.ingested.repeats} readings repeated"
    )
    # Repeats come from the batch in flight at the kill (at most 50 messages of 2 readings
    # per kit) and from the in-flight window to the platform that Mosquitto autosaved and
    # sends again after its restart (about a second: 50 messages of 2 readings per kit).
    assert platform.ingested.repeats <= 2 * (2 * 50 * 2), platform.ingested.repeats


# --- the fake's own checks ----------------------------------------------------------------------

BAD_AND_GOOD: list[tuple[str, bytes, int, str | None]] = [
    # (topic, payload, qos, the violation expected, or None)
    (
        "device/sck/a1b2c3/readings",
        b'{"data":[{"recorded_at":"2024-01-01 10:00:00","sensors":[{"id":10,"value":5}]}]}',
        0,
        "QoS 0",
    ),
    ("device/sck/A1B2C3/readings", b'{"data":[]}', 1, "6 lowercase"),
    ("device/sck/a1b2c3/values", b"{}", 1, "does not subscribe"),
    ("device/sck/a1b2c3/readings", b"not json", 1, ": not JSON"),
    ("device/sck/a1b2c3/readings", b'{"data":[]}', 1, "non-empty data"),
    ("device/sck/a1b2c3/readings", b'{"data":[{"sensors":[]}]}', 1, "no recorded_at"),
    (
        "device/sck/a1b2c3/readings",
        b'{"data":[{"recorded_at":"yesterday","sensors":[]}]}',
        1,
        "does not parse",
    ),
    (
        "device/sck/a1b2c3/readings",
        b'{"data":[{"recorded_at":"2099-01-01T00:00:00Z","sensors":[]}]}',
        1,
        "more than 1 day",
    ),
    (
        "device/sck/a1b2c3/readings",
        b'{"data":[{"recorded_at":"2024-01-01T00:00:00Z","sensors":[{"id":10}]}]}',
        1,
        "{id, value}",
    ),
    ("device/sck/a1b2c3/readings/raw", b"{t:2024-09-25T13:19:38Z,10:ninety}", 1, "raw grammar"),
    ("device/sck/a1b2c3/info", b"hw 2.1", 1, "info is not JSON"),
    # accepted: the raw grammar with spaces, a negative float and a null, non-ASCII stripped
    (
        "device/sck/a1b2c3/readings/raw",
        "{ t:2024-09-25T13:19:38Z, 10:4.45 14:-2000.5,12:null}\U0001f4a3".encode(),
        1,
        None,
    ),
    # accepted: a sensor key, an unknown id, a text value; and an unknown token, dropped
    (
        "device/sck/a1b2c3/readings",
        b'{"data":[{"recorded_at":"2024-09-25T13:20:38+00:00",'
        b'"sensors":[{"id":"battery","value":"7"},{"id":999,"value":1},'
        b'{"id":"13","value":"0-0-12"}]}]}',
        1,
        None,
    ),
    ("device/sck/zz9x1q/readings", b"anything", 1, None),
    ("device/sck/a1b2c3/hello", b"a1b2c3", 1, None),
    ("device/inventory", b'{"id":"sam"}', 1, None),
]


def test_the_fake_catches_what_it_claims_to(broker: Mosquitto) -> None:
    with FakeSmartCitizen(broker.port, devices=["a1b2c3"]) as platform:
        sender = client(broker.port, "fake-check-sender")
        try:
            for topic, payload, qos, _ in BAD_AND_GOOD:
                info = sender.publish(topic, payload, qos=qos)
                if qos:
                    info.wait_for_publish(5)
            wait_until(lambda: platform.messages == len(BAD_AND_GOOD), "every message taken")
        finally:
            sender.disconnect()
            sender.loop_stop()
    wanted = [want for *_, want in BAD_AND_GOOD if want is not None]
    assert len(platform.violations) == len(wanted), platform.violations
    for want in wanted:  # QoS 0 and QoS 1 messages may arrive in either order
        assert sum(want in v for v in platform.violations) == 1, (want, platform.violations)
    when = datetime(2024, 9, 25, 13, 19, 38, tzinfo=UTC)
    later = datetime(2024, 9, 25, 13, 20, 38, tzinfo=UTC)
    assert platform.readings("a1b2c3") == {
        (datetime(2024, 1, 1, 10, tzinfo=UTC), 10): 5.0,  # QoS 0 is a violation, yet stored
        (when, 10): 4.45,
        (when, 14): -2000.5,
        (later, 10): 7.0,
        (later, 13): "0-0-12",
    }
    assert platform.stripped == 4
    assert platform.skipped_ids() == {("a1b2c3", "999")}
    assert platform.dropped == {"zz9x1q": 1}
    assert platform.ingested.hellos == {"a1b2c3": 1}
    assert platform.ingested.inventory == ['{"id":"sam"}']
