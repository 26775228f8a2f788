"""The MQTT source in process, on a real store and a real Mosquitto: back-pressure,
quarantined payloads acknowledged, and a stop that answers everything it took."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from fieldbridge.ingest import Ingest
from fieldbridge.sources.mqtt import MqttSettings, MqttSource
from fieldbridge.store import Store, open_store, parse_store_url
from fieldbridge.store.migrate import upgrade
from tests.conftest import eventually
from tests.support.locks import sqlite_write_locked
from tests.support.mqtt_broker import Mosquitto, Publisher, client
from tests.support.mqtt_tap import PUBACK, PUBCOMP, MqttTap

TOPIC = "site/levels"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    # No in-flight limit: the broker pushes everything it has, so only fieldbridge's own
    # back-pressure can keep the messages out of its memory.
    with Mosquitto(tmp_path / "broker", extra=["max_inflight_messages 0"]) as running:
        yield running


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    upgrade(parse_store_url(url))
    async with open_store(url, busy_timeout_ms=20_000) as opened:
        yield opened


def settings(url: str, **values: Any) -> MqttSettings:
    defaults: dict[str, Any] = {
        "name": "mqtt",
        "url": url,
        "client_id": f"flow-{time.time_ns()}",
        "topics": [f"{TOPIC}/#"],
        "codec": "http-json",
        "status_topic": "",
        "max_backoff": 1.0,
    }
    return MqttSettings.model_validate({**defaults, **values})


def count(db: Path, sql: str) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


async def test_full_ingest_stops_reading_and_loses_nothing(
    tmp_path: Path, broker: Mosquitto, store: Store
) -> None:
    db = tmp_path / "store.db"
    bound = 20
    async with (
        Ingest(store, batch_size=10, queue_bound=bound) as ingest,
        MqttSource(settings(broker.url), ingest) as source,
    ):
        await eventually(lambda: source.subscribed, "the subscription", timeout=20)
        publisher = Publisher(broker.port, TOPIC)
        try:
            with sqlite_write_locked(db):  # commits wait for the lock: ingest fills up
                publisher.burst(2000)
                await asyncio.to_thread(publisher.wait_all_acked)
                await eventually(lambda: not source.reading, "reading to stop", timeout=5)
                await asyncio.sleep(0.5)  # a window in which nothing may happen
                assert not source.reading
                assert source.in_flight == bound  # not one message more taken off the socket
            await eventually(
                lambda: count(db, "SELECT count(*) FROM journal") == 2000, "all", timeout=30
            )
            assert source.reading
        finally:
            publisher.close()
    assert count(db, "SELECT count(DISTINCT idem_key) FROM journal") == 2000


async def test_quarantined_payload_is_acknowledged(
    tmp_path: Path, broker: Mosquitto, store: Store
) -> None:
    db = tmp_path / "store.db"
    with MqttTap(broker.port) as tap:
        async with (
            Ingest(store) as ingest,
            MqttSource(settings(tap.url), ingest) as source,
        ):
            await eventually(lambda: source.subscribed, "the subscription", timeout=20)
            sender = client(broker.port, "bad-device")
            try:
                sender.publish(f"{TOPIC}/7", b"\xff not json", qos=1).wait_for_publish(5)
            finally:
                sender.disconnect()
                sender.loop_stop()
            await eventually(lambda: tap.to_broker[PUBACK] == 1, "the PUBACK", timeout=10)
    assert count(db, "SELECT count(*) FROM quarantine") == 1
    conn = sqlite3.connect(db)
    try:
        [(meta, reason)] = conn.execute("SELECT meta, reason FROM quarantine").fetchall()
    finally:
        conn.close()
    assert f'"topic":"{TOPIC}/7"' in meta.replace(" ", "")
    assert reason == "body is not UTF-8: invalid byte 0xff at offset 0"


async def test_json_codec_edges_are_quarantined_with_their_reasons(
    tmp_path: Path, broker: Mosquitto, store: Store
) -> None:
    """A device id with a bidi override, a message without readings and a duplicate key: each
    is quarantined with its reason and acknowledged."""
    db = tmp_path / "store.db"
    sent = [
        (f"{TOPIC}/ad\u202emin", b'{"v": 1}'),
        (f"{TOPIC}/tank-1", b'{"s": "text"}'),
        (f"{TOPIC}/tank-2", b'{"v": 1, "v": 2}'),
    ]
    options = {"codec": "json", "codec_options": {"device_topic_segment": 2}}
    with MqttTap(broker.port) as tap:
        async with (
            Ingest(store) as ingest,
            MqttSource(settings(tap.url, **options), ingest) as source,
        ):
            await eventually(lambda: source.subscribed, "the subscription", timeout=20)
            sender = client(broker.port, "edges")
            try:
                for topic, payload in sent:
                    sender.publish(topic, payload, qos=1).wait_for_publish(5)
            finally:
                sender.disconnect()
                sender.loop_stop()
            await eventually(lambda: tap.to_broker[PUBACK] == 3, "the PUBACKs", timeout=10)
    conn = sqlite3.connect(db)
    try:
        reasons = [r for (r,) in conn.execute("SELECT reason FROM quarantine ORDER BY id")]
        stored = conn.execute("SELECT count(*) FROM journal").fetchone()[0]
    finally:
        conn.close()
    assert stored == 0
    assert sorted(reasons) == sorted(
        [
            "topic level 2 'ad\\u202emin' contains the invisible format character U+202E at "
            "position 2; device ids must be printable text (no control, format or invisible "
            "characters)",
            "payload holds no readings (it has no number); set "
            "codec_options.keep_without_readings = true to store text-only messages",
            "payload: key 'v' appears twice; send each key once in an object",
        ]
    )


async def test_stop_answers_what_it_took(tmp_path: Path, broker: Mosquitto, store: Store) -> None:
    """Leaving the source waits for the commits of messages it handed to ingest."""
    db = tmp_path / "store.db"
    name = f"stop-{time.time_ns()}"
    async with Ingest(store, batch_size=50) as ingest:
        source = MqttSource(settings(broker.url, client_id=name), ingest)
        async with source:
            await eventually(lambda: source.subscribed, "the subscription", timeout=20)
            publisher = Publisher(broker.port, TOPIC)
            try:
                publisher.burst(500)
                await asyncio.to_thread(publisher.wait_all_acked)
                await eventually(
                    lambda: source.in_flight > 0 or _stored(db) > 0, "work", timeout=10
                )
            finally:
                publisher.close()
        assert source.in_flight == 0
        taken = _stored(db)
    # What the first session did not take stays with the broker for the next one.
    async with Ingest(store) as ingest:
        source = MqttSource(settings(broker.url, client_id=name), ingest)
        async with source:
            await eventually(lambda: _stored(db) == 500, "the rest after reconnecting", timeout=20)
    assert taken <= 500
    assert count(db, "SELECT count(DISTINCT idem_key) FROM journal") == 500


async def stored_count(db: Path, want: int) -> None:
    await eventually(lambda: _stored(db) == want, f"{want} stored messages", timeout=30)


def _stored(db: Path) -> int:
    return count(db, "SELECT count(*) FROM journal")


@pytest.mark.parametrize(("protocol", "qos"), [("5", 1), ("3.1.1", 2), ("5", 2)])
async def test_mqtt5_and_qos2_store_everything_once(
    tmp_path: Path, broker: Mosquitto, store: Store, protocol: str, qos: int
) -> None:
    """MQTT 5 and QoS 2 take paho's own path (properties, PUBREC/PUBREL/PUBCOMP)."""
    db = tmp_path / "store.db"
    name = f"v{protocol}-q{qos}-{time.time_ns()}"
    with MqttTap(broker.port) as tap:
        for first in (0, 100):  # the second connect resumes the session
            source_settings = settings(tap.url, client_id=name, protocol=protocol, qos=qos)
            numbers = range(first, first + 100)
            await one_round(store, source_settings, broker.port, qos, numbers, db)
        # QoS 1 is answered with PUBACK, QoS 2 with PUBREC and, after commit, PUBCOMP; the
        # tap's relay thread may still be counting the last answers when the source has left.
        answer = PUBACK if qos == 1 else PUBCOMP
        await eventually(
            lambda: tap.to_broker[answer] >= 200, "every answer through the tap", timeout=20
        )
    assert count(db, "SELECT count(DISTINCT idem_key) FROM journal") == 200


async def one_round(
    store: Store, source_settings: MqttSettings, port: int, qos: int, numbers: range, db: Path
) -> None:
    """Connect a source, publish `numbers` at `qos`, wait until they are stored, stop."""
    async with Ingest(store) as ingest, MqttSource(source_settings, ingest) as source:
        await eventually(lambda: source.subscribed, "the subscription", timeout=20)
        publisher = Publisher(port, TOPIC, qos=qos)
        try:
            for n in numbers:
                publisher.publish(n)
            await asyncio.to_thread(publisher.wait_all_acked)
        finally:
            publisher.close()
        await stored_count(db, numbers.stop)
        await eventually(lambda: source.in_flight == 0, "the answers", timeout=10)
