"""End to end: a simulated Smart Citizen Kit publishes to Mosquitto; fieldbridge stores it.

Uses the machine's Mosquitto on 127.0.0.1:1883 (it is not restarted here) with a random kit
token, so the topics are this test's own.
"""

from __future__ import annotations

import json
import secrets
import string
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import wait_until
from tests.support.paths import FIXTURES
from tests.support.processes import FieldbridgeProcess
from tests.support.smartcitizen_sim import Kit
from tests.support.spy_watch import Spy

BROKER = ("127.0.0.1", 1883)
WAIT = 20.0


def token() -> str:
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(6))


@pytest.fixture
def kit_token() -> str:
    return token()


@pytest.fixture
def service(tmp_path: Path, kit_token: str) -> Iterator[tuple[FieldbridgeProcess, str]]:
    stranger = token()
    source = {
        "name": "kits",
        "url": f"mqtt://{BROKER[0]}:{BROKER[1]}",
        "client_id": f"fieldbridge-e2e-{kit_token}",
        "clean_session": True,  # leave no session behind on the shared broker
        "status_topic": "",  # nor a retained status message
        "topics": [f"device/sck/{kit_token}/#", f"device/sck/{stranger}/hello"],
        "qos": 1,
        "codec": "smartcitizen",
        "codec_options": {"tokens": [kit_token]},
    }
    with FieldbridgeProcess(tmp_path / "svc", sources={"mqtt": [source]}) as process:
        process.start()
        # The source logs its SUBACK; publishing before it would find no subscriber.
        wait_until(lambda: "; subscribed to" in process.output(), "the source is subscribed")
        yield process, stranger


def cli_json(process: FieldbridgeProcess, *args: str) -> Any:
    done = process.cli(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_kit_shows_up_in_devices_and_readings(
    service: tuple[FieldbridgeProcess, str], kit_token: str
) -> None:
    process, stranger = service
    spy = Spy(process.config_path, "--json", "--topic", "device/sck/+/readings")
    try:
        assert spy.event()["type"] == "hello"
        now = time.time()
        with Kit(kit_token, *BROKER, seed=7) as kit, Kit(stranger, *BROKER) as intruder:
            kit.hello()
            info = kit.info()
            sent = kit.readings([now - 120, now - 60])
            kit.raw(now)
            kit.publish("readings", sent)  # a redelivery: nothing is stored twice
            intruder.hello()
        per_item = len(kit.sensors)
        expected = 3 * per_item

        def stored() -> list[dict[str, Any]] | None:
            rows: list[dict[str, Any]] = cli_json(
                process, "readings", "list", "--device", kit_token, "--limit", "1000"
            )
            return rows if len(rows) >= expected else None

        readings = wait_until(stored, f"{expected} readings are stored")
        seen = [spy.event(), spy.event()]
    finally:
        spy.kill()

    assert len(readings) == expected
    quantities = {r["quantity"] for r in readings}
    assert {"battery", "temperature", "humidity", "light", "noise_dba", "pm_2_5"} <= quantities
    temperature = [r for r in readings if r["quantity"] == "temperature"]
    assert [r["unit"] for r in temperature] == ["°C"] * 3
    assert [r["channel"] for r in temperature] == [55] * 3

    [device] = [d for d in cli_json(process, "devices", "list") if d["id"] == kit_token]
    assert (device["kind"], device["source"]) == ("smartcitizen", "kits")
    assert device["attributes"] == {"hardware_info": info}
    assert device["message_count"] == 4  # hello, info, readings, raw; the redelivery is not new

    # The spy saw the JSON readings and its redelivery (marked duplicate), not hello or raw.
    assert [(e["topic"], e["outcome"]) for e in seen] == [
        (f"device/sck/{kit_token}/readings", "accepted"),
        (f"device/sck/{kit_token}/readings", "duplicate"),
    ]

    [refused] = cli_json(process, "quarantine", "list")
    assert refused["reason"] == (
        f"token {stranger!r} is not in codec_options.tokens of this source; add it there to "
        "accept this kit"
    )
    assert refused["meta"]["topic"] == f"device/sck/{stranger}/hello"
    metrics = httpx.get(f"{process.base_url}/metrics", timeout=5.0).text
    assert 'fieldbridge_rejected_payloads_total{cause="unknown_token",source="kits"} 1.0' in metrics


def test_a_catch_up_with_one_bad_clock_reading_is_acknowledged_stored_and_quarantined(
    service: tuple[FieldbridgeProcess, str], kit_token: str
) -> None:
    process, _ = service
    recorded = {
        m["name"]: m
        for m in json.loads((FIXTURES / "smartcitizen" / "messages.json").read_text())["messages"]
    }["readings_catch_up_one_future"]
    spy = Spy(process.config_path, "--json", "--topic", "device/sck/+/readings")
    text = Spy(process.config_path, "--topic", "device/sck/+/readings")
    try:
        assert spy.event()["type"] == "hello"
        text.line()  # its header: it is watching
        with Kit(kit_token, *BROKER) as kit:
            kit.publish("readings", recorded["payload"].encode())  # returns on the PUBACK
        seen = spy.event()
        line = text.line()
    finally:
        spy.kill()
        text.kill()

    assert f"{kit_token} battery=81% temperature=12.4°C" in line
    assert "; refused data[1].recorded_at: '2033-05-18T03:33:20Z' is more than" in line

    assert seen["outcome"] == "accepted"
    [item] = seen["quarantined"]
    assert item["reason"].startswith("data[1].recorded_at: '2033-05-18T03:33:20Z' is more than")
    readings = cli_json(process, "readings", "list", "--device", kit_token)
    assert sorted((r["quantity"], r["value"]) for r in readings) == [
        ("battery", 80.0), ("battery", 81.0), ("temperature", 12.1), ("temperature", 12.4)
    ]  # fmt: skip
    [kept] = cli_json(process, "quarantine", "list")
    assert kept["id"] == item["quarantine_id"]
    assert kept["meta"]["topic"] == f"device/sck/{kit_token}/readings"
    metrics = httpx.get(f"{process.base_url}/metrics", timeout=5.0).text
    assert 'fieldbridge_quarantined_total{source="kits"} 1.0' in metrics
