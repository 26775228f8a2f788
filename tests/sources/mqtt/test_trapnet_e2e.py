"""End to end: a simulated trap network publishes to a Mosquitto of the test's own; a real
`fieldbridge run` with codec trapnet fills the registry, links and message-type readings."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_until
from tests.support.mqtt_broker import Mosquitto
from tests.support.processes import FieldbridgeProcess
from tests.support.trapnet_sim import TrapNetwork


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as running:
        yield running


@pytest.fixture
def service(tmp_path: Path, broker: Mosquitto) -> Iterator[FieldbridgeProcess]:
    source = {
        "name": "aklc",
        "url": broker.url,
        "client_id": "fieldbridge-trapnet-e2e",
        "topics": ["AKLC/#", "EnvironmentalServices/#", "Waiheke/#"],
        "qos": 1,
        "codec": "trapnet",
        "codec_options": {"prefix": "AKLC"},
    }
    with FieldbridgeProcess(tmp_path / "svc", sources={"mqtt": [source]}) as process:
        process.start()
        wait_until(lambda: "; subscribed to" in process.output(), "the source is subscribed")
        yield process


def cli_json(process: FieldbridgeProcess, *args: str) -> Any:
    done = process.cli(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_simulated_trap_network_fills_the_registry(
    service: FieldbridgeProcess, broker: Mosquitto
) -> None:
    cli_json(
        service,
        "messagetypes",
        "add",
        "trap",
        "Catches:I",
        "Bait:F",
        "VBat:F",
        "RSSI:I",
        "Site:S:tag",
    )
    cli_json(service, "devices", "add", "Trap1")
    shown = cli_json(service, "devices", "set", "Trap1", "--message-type", "trap")
    assert shown["message_type"] == "trap"

    with TrapNetwork(broker.port) as net:
        net.gateway_status("GW1", "LoRa32", "1.4.2")
        net.gateway_status("GW2", "RPi3", "2.0.1")
        net.network(
            "GW1",
            {"Gateway": "GW1", "Status": "OK", "Version": "1.4.3", "Type": "LoRa32", "Uptime": 90},
        )
        net.relay("GW1", "Trap1", 2, 75.5, 3.7, -98, "Bayfield")
        net.relay("GW2", "Trap1", 3, 70.0, 3.6, -104, "Bayfield", via=("RP1",))
        net.relay_status("GW2", "RP1", 12.6)
        net.relay("GW2", "Trap2", 0, 99.0, 3.9, -90, "Torbay", via=("RP1",))
        net.team("Waiheke", "Trap1", {"VBat": 3.6, "latitude": -36.78, "longitude": 175.01})
        net.trap_event("Trap1", "T", "O", Gateway="GW1", TrapID="T-9")
        net.trap_event("Trap1", "X", "O")
        # Skipped on purpose or refused: each kept in quarantine with its reason.
        net.relay("GW1", "TestNode", 1, 2)
        net.publish("AKLC/Gateway", "GW1-GWSTATUS,77,OK")
        net.network("Trap1", {"Status": "Missing"})
        net.relay("GW1", "Tr@p", 1)
        net.wait_acknowledged()

    def quarantined() -> list[dict[str, Any]] | None:
        rows: list[dict[str, Any]] = cli_json(service, "quarantine", "list")
        return rows if len(rows) >= 4 else None

    refused = wait_until(quarantined, "4 payloads quarantined")
    assert sorted(r["reason"].split(":")[0] for r in refused) == [
        "Gateway field 2 (node id)",
        "ignored",
        "ignored",
        "ignored",
    ]

    def trap1_readings() -> list[dict[str, Any]] | None:
        rows: list[dict[str, Any]] = cli_json(service, "readings", "list", "--device", "Trap1")
        return rows if len(rows) >= 13 else None

    readings = wait_until(trap1_readings, "Trap1's readings")
    named = [
        (r["quantity"], r["value"])
        for r in readings
        if r["message_id"] == readings[0]["message_id"]
    ]
    assert named == [("Catches", 2.0), ("Bait", 75.5), ("VBat", 3.7), ("RSSI", -98.0)]
    quantities = [r["quantity"] for r in readings]
    assert quantities.count("trap_event") == 2
    assert quantities.count("Catches") == 2

    trap1 = cli_json(service, "devices", "show", "Trap1")
    assert (trap1["id"], trap1["kind"], trap1["role"], trap1["status"]) == (
        "Trap1",
        "trapnet",
        "node",
        "current",
    )
    assert trap1["team"] == "Waiheke"
    assert trap1["flags"] == {}
    # Latest first: the trap event named GW1 after GW2 relayed the second line.
    assert [g["gateway"] for g in trap1["gateways"]] == ["GW1", "GW2"]
    assert [r["repeater"] for r in trap1["repeaters"]] == ["RP1"]
    assert trap1["attributes"]["trap_id"] == "T-9"
    assert trap1["location"] == {"latitude": -36.78, "longitude": 175.01, "source": "reported"}
    assert trap1["last_seen"] and trap1["gateways"][0]["last_seen"]

    roles = {d["id"]: d["role"] for d in cli_json(service, "devices", "list")}
    assert roles == {
        "Trap1": "node",
        "Trap2": "node",
        "GW1": "gateway",
        "GW2": "gateway",
        "RP1": "repeater",
    }
    gw1 = cli_json(service, "devices", "show", "GW1")
    assert (gw1["attributes"]["software"], gw1["attributes"]["uptime_min"]) == ("1.4.3", 90.0)
    assert [d["device"] for d in gw1["relayed"]] == ["Trap1"]
    rp1 = cli_json(service, "devices", "show", "RP1")
    assert rp1["attributes"]["last_status"] == "GW2,RP1,OK,12.6"
    assert [g["gateway"] for g in rp1["gateways"]] == ["GW2"]

    shown = cli_json(
        service, "devices", "set", "Trap1", "--status", "maintenance", "--location=-36.8,174.8"
    )
    assert shown["status"] == "maintenance"
    assert shown["location"]["source"] == "override"
