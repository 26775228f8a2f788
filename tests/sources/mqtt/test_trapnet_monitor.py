"""The trap network's monitor: liveness with an injected clock against the real store, and its
notification requests, replies, LWT and status on a real Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from fieldbridge.ingest import Ingest
from fieldbridge.model import Accepted, DeviceStatus, NotifyChannel, Subscriber
from fieldbridge.sources.mqtt.monitor import TrapnetMonitor
from fieldbridge.sources.mqtt.monitor_settings import MonitorSettings
from fieldbridge.sources.mqtt.settings import MqttSettings
from fieldbridge.store import Store, open_store, parse_store_url
from fieldbridge.store.migrate import upgrade
from tests.conftest import eventually, wait_until
from tests.support.mqtt_broker import Mosquitto, retained, watching
from tests.support.processes import FieldbridgeProcess
from tests.support.trapnet_sim import TrapNetwork

T0 = 1_764_800_000.0
MIN = 60.0
EMAIL, SMS = "AKLC/email/send", "AKLC/sms/send"


class Clock:
    """The monitor's time, moved by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as running:
        yield running


def source_settings(broker: Mosquitto, **monitor: Any) -> MqttSettings:
    return MqttSettings(
        name="aklc",
        url=broker.url,
        topics=["AKLC/#"],
        codec="trapnet",
        monitor=MonitorSettings(email_from="monitor@council.nz", **monitor),
    )


@contextlib.asynccontextmanager
async def monitoring(
    broker: Mosquitto, store: Store, clock: Clock
) -> AsyncIterator[TrapnetMonitor]:
    settings = source_settings(broker, check_period_s=3600)  # the test calls check() itself
    assert settings.monitor is not None
    async with TrapnetMonitor(settings, settings.monitor, store, clock=clock) as monitor:
        await eventually(lambda: monitor.connections == 1, "the monitor connected")
        yield monitor


async def node_message(store: Store, node: str, at: float, **values: Any) -> None:
    settings = MqttSettings(name="aklc", topics=["AKLC/#"], codec="trapnet")
    body = json.dumps({"NodeID": node, "VBat": 3.7, **values}).encode()
    async with Ingest(store) as feed:
        outcome = await feed.submit(
            "aklc", body, settings.decoder, {"topic": f"AKLC/Node/{node}"}, at
        )
    assert isinstance(outcome, Accepted), outcome


def bodies(watcher: Any, topic: str) -> list[dict[str, str]]:
    return [json.loads(p) for p in watcher.payloads(topic)]


async def test_a_silent_node_goes_down_once_and_comes_back_up(
    store: Store, broker: Mosquitto
) -> None:
    clock = Clock(T0)
    await node_message(store, "Trap1", T0)
    await node_message(store, "Trap2", T0)
    await store.set_subscribers(
        "Trap1",
        add=[
            Subscriber(NotifyChannel.EMAIL, "ranger@council.nz"),
            Subscriber(NotifyChannel.SMS, "+64211234567"),
        ],
    )
    await store.update_device("Trap2", status=DeviceStatus.MAINTENANCE, at=T0)
    with watching(broker.port, "AKLC/+/send") as watcher:
        async with monitoring(broker, store, clock) as monitor:
            clock.now = T0 + 59 * MIN
            assert await monitor.check() == 0
            still = await store.get_device("Trap1")
            assert still is not None and still.status is DeviceStatus.CURRENT

            clock.now = T0 + 61 * MIN
            assert await monitor.check() == 1
            assert await monitor.check() == 0  # at most once per transition
            device = await store.get_device("Trap1")
            assert device is not None and device.status is DeviceStatus.DOWN
            wait_until(lambda: len(watcher.seen) == 2, "the two notification requests")
            [mail] = bodies(watcher, EMAIL)
            assert mail["To"] == "ranger@council.nz" and mail["From"] == "monitor@council.nz"
            assert set(mail) == {"To", "From", "Subject", "Body"}
            assert mail["Subject"] == "Node Trap1 is down"
            assert "allowed 60 min" in mail["Body"]
            [text] = bodies(watcher, SMS)
            assert set(text) == {"Number", "Text"} and text["Number"] == "+64211234567"
            assert "Trap1 DOWN" in text["Text"]

            await node_message(store, "Trap1", T0 + 70 * MIN)  # its next message: up again
            device = await store.get_device("Trap1")
            assert device is not None and device.status is DeviceStatus.CURRENT
            clock.now = T0 + 71 * MIN
            assert await monitor.check() == 1
            wait_until(lambda: len(watcher.seen) == 4, "the two 'up' requests")
            assert bodies(watcher, EMAIL)[-1]["Subject"] == "Node Trap1 is up again"
            assert "Trap1 UP" in bodies(watcher, SMS)[-1]["Text"]

            clock.now = T0 + 600 * MIN  # Trap1 silent again: down again; Trap2 in maintenance
            assert await monitor.check() == 1
            trap2 = await store.get_device("Trap2")
            assert trap2 is not None and trap2.status is DeviceStatus.MAINTENANCE
    history = await store.transitions("Trap1")
    assert [(t.from_status, t.to_status) for t in history] == [
        (DeviceStatus.CURRENT, DeviceStatus.DOWN),
        (DeviceStatus.DOWN, DeviceStatus.CURRENT),
        (DeviceStatus.CURRENT, DeviceStatus.DOWN),
    ]
    assert all(t.notified_at is not None for t in history)


async def test_notifications_owed_at_a_restart_are_sent_once_after_it(
    store: Store, broker: Mosquitto
) -> None:
    await node_message(store, "Trap1", T0)
    await store.set_subscribers("Trap1", add=[Subscriber(NotifyChannel.EMAIL, "a@b.nz")])
    # The previous run stored the transition and stopped before publishing its notification.
    [made] = await store.mark_silent_down(T0 + 61 * MIN, source="aklc")
    assert made.notified_at is None
    with watching(broker.port, EMAIL) as watcher:
        async with monitoring(broker, store, Clock(T0 + 62 * MIN)) as monitor:
            assert await monitor.check() == 1
            assert await monitor.check() == 0
            wait_until(lambda: len(watcher.seen) == 1, "the owed notification")
    assert [t.notified_at for t in await store.pending_transitions()] == []


async def test_a_broker_that_is_down_leaves_the_notification_owed(
    store: Store, broker: Mosquitto
) -> None:
    await node_message(store, "Trap1", T0)
    await store.set_subscribers("Trap1", add=[Subscriber(NotifyChannel.SMS, "+6421")])
    clock = Clock(T0 + 61 * MIN)
    async with monitoring(broker, store, clock) as monitor:
        broker.stop()
        await eventually(
            lambda: monitor._client is not None and not monitor._client.is_connected(),
            "disconnected",
        )
        assert await monitor.check() == 0
        assert len(await store.pending_transitions()) == 1
        broker.start()
        await eventually(lambda: monitor.connections == 2, "the monitor reconnected", timeout=20)
        with watching(broker.port, SMS) as watcher:
            assert await monitor.check() == 1
            wait_until(lambda: len(watcher.seen) == 1, "the notification after all")


def test_monitor_needs_the_trapnet_codec(broker: Mosquitto) -> None:
    with pytest.raises(ValidationError, match="monitor: the trap-network monitor needs codec"):
        MqttSettings(name="x", topics=["a/#"], codec="json", monitor=MonitorSettings())
    with pytest.raises(ValidationError, match="monitor: the trap-network monitor needs codec"):
        MqttSettings.model_validate({"name": "x", "topics": ["a/#"], "monitor": True})


def test_monitor_true_is_the_monitor_with_its_defaults() -> None:
    on = MqttSettings.model_validate(
        {"name": "x", "topics": ["AKLC/#"], "codec": "trapnet", "monitor": True}
    )
    assert on.monitor == MonitorSettings()
    assert on.monitor.status_period_min == 5 and on.monitor.check_period_s == 60
    off = MqttSettings.model_validate(
        {"name": "x", "topics": ["AKLC/#"], "codec": "trapnet", "monitor": False}
    )
    assert off.monitor is None


# --- a real `fieldbridge run`: replies after commit, LWT and status -------------------------


@pytest.fixture
def service(tmp_path: Path, broker: Mosquitto) -> Iterator[FieldbridgeProcess]:
    source = {
        "name": "aklc",
        "url": broker.url,
        "client_id": "fieldbridge-monitor-e2e",
        "topics": ["AKLC/#"],
        "qos": 1,
        "codec": "trapnet",
        "monitor": {"name": "DJ_Mon_Script", "status_period_min": 0.01, "check_period_s": 0.5},
    }
    with FieldbridgeProcess(tmp_path / "svc", sources={"mqtt": [source]}) as process:
        process.start()
        wait_until(lambda: "; subscribed to" in process.output(), "the source is subscribed")
        yield process


def test_replies_come_after_commit_and_the_lwt_says_running_then_failed(
    service: FieldbridgeProcess, broker: Mosquitto
) -> None:
    base = "AKLC/monitor/DJ_Mon_Script"
    wait_until(lambda: retained(broker.port, f"{base}/LWT") == b"Running", "LWT Running")
    with watching(broker.port, "AKLC/#") as watcher, TrapNetwork(broker.port) as net:
        net.publish("AKLC/Node/Trap1", {"NodeID": "Trap1", "VBat": 3.7, "Reply": 1})
        watcher.wait_for("AKLC/Control/Trap1", b"Data received")
        # Sent after the commit: the message is in the store by then.
        assert service.query("SELECT count(*) FROM journal WHERE device = 'Trap1'") == [(1,)]
        net.publish("AKLC/Network/GW1", {"Gateway": "GW1", "Status": "OK", "Reply": "y"})
        watcher.wait_for("AKLC/Control/GW1", b"Status received")
        net.publish("AKLC/Node/Trap2", {"NodeID": "Trap2", "VBat": 3.6})  # no Reply key
        wait_until(lambda: len(watcher.payloads(f"{base}/status")) >= 2, "two status messages")
        wait_until(
            lambda: json.loads(watcher.payloads(f"{base}/status")[-1]).get("msgCount") == 3,
            "the status counting three messages",
        )
        status = json.loads(watcher.payloads(f"{base}/status")[-1])
        assert status["scriptName"] == "DJ_Mon_Script" and status["connectionCount"] == 1
        assert status["Node"] == 2 and status["Network"] == 1 and status["upTime(s)"] >= 0
        assert watcher.payloads("AKLC/Control/Trap2") == []
    service.send(signal.SIGKILL)
    service.wait(10)
    wait_until(lambda: retained(broker.port, f"{base}/LWT") == b"Failed", "LWT Failed")


async def test_a_clean_stop_says_stopped(store: Store, broker: Mosquitto) -> None:
    async with monitoring(broker, store, Clock(T0)):
        pass
    found = await asyncio.to_thread(retained, broker.port, "AKLC/monitor/fieldbridge/LWT")
    assert found == b"Stopped"


def test_a_notification_owed_when_fieldbridge_died_is_published_once_after_its_restart(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """A real `fieldbridge run` stores Trap1's down transition while the broker is away and is
    killed before it can publish; the next run publishes it once; a third run publishes
    nothing again."""
    source = {
        "name": "aklc",
        "url": broker.url,
        "client_id": "fieldbridge-monitor-restart",
        "topics": ["AKLC/#"],
        "qos": 1,
        "codec": "trapnet",
        "monitor": {"status_period_min": 0.005, "check_period_s": 0.2},
    }
    process = FieldbridgeProcess(tmp_path / "svc", sources={"mqtt": [source]})
    url = f"sqlite:///{process.db_path}"
    upgrade(parse_store_url(url))

    async def seed() -> None:
        async with open_store(url) as store:
            await node_message(store, "Trap1", time.time() - 2 * 3600)  # silent for two hours
            await store.set_subscribers(
                "Trap1",
                add=[
                    Subscriber(NotifyChannel.EMAIL, "ranger@council.nz"),
                    Subscriber(NotifyChannel.SMS, "+64211234567"),
                ],
            )

    asyncio.run(seed())
    pending = "SELECT count(*) FROM device_transitions WHERE notified_at IS NULL"
    broker.stop()
    with process:
        process.start()
        wait_until(lambda: process.query(pending) == [(1,)], "the stored, owed transition")
        process.send(signal.SIGKILL)
        process.wait(10)
        broker.start()
        with watching(broker.port, "AKLC/#") as watcher:
            process.start()
            wait_until(lambda: process.query(pending) == [(0,)], "the transition notified")
            wait_until(lambda: len(watcher.payloads(SMS)) == 1, "the sms request")
            [mail] = bodies(watcher, EMAIL)
            assert mail["To"] == "ranger@council.nz" and mail["Subject"] == "Node Trap1 is down"
            process.terminate()
            process.wait(10)
            status = "AKLC/monitor/fieldbridge/status"
            seen = len(watcher.payloads(status))
            process.start()  # a third run: checks again, owes nothing
            wait_until(lambda: len(watcher.payloads(status)) >= seen + 3, "three checks done")
            assert len(watcher.payloads(EMAIL)) == 1 and len(watcher.payloads(SMS)) == 1
    assert process.query("SELECT count(*) FROM device_transitions") == [(1,)]
