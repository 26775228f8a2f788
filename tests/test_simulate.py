"""`fieldbridge simulate` against a running fieldbridge: Efento sensors over CoAP, Smart Citizen
Kits and a trap network over MQTT (a Mosquitto of the test's own), checked in the store through
the store functions the CLI uses; and the simulator's frames and answers on their own."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fieldbridge.codecs import efento as efento_codec
from fieldbridge.codecs.efento import encode_config
from fieldbridge.codecs.efento.proto.config_pb2 import ProtoConfig
from fieldbridge.config import load_settings
from fieldbridge.model import Role
from fieldbridge.simulate import Plan, resolve
from fieldbridge.simulate.efento import (
    HUMIDITY,
    MODELS,
    OK_ALARM,
    PRESSURE,
    TEMPERATURE,
    EfentoSensor,
    serial_for,
)
from fieldbridge.simulate.pacing import Pacer, period_for
from fieldbridge.simulate.smartcitizen import Kit, token_for
from fieldbridge.simulate.trapnet import node_id
from fieldbridge.store import open_store
from tests.conftest import wait_until
from tests.support.coap_harness import answers_in, coap_client
from tests.support.efento_sim import free_udp_port
from tests.support.mqtt_broker import Mosquitto
from tests.support.paths import ROOT
from tests.support.processes import FIELDBRIDGE, FieldbridgeProcess, child_env, run_cli, to_toml

pytestmark = pytest.mark.xdist_group("simulate")

KIT_TOPICS = [
    "device/sck/+/readings",
    "device/sck/+/readings/raw",
    "device/sck/+/hello",
    "device/sck/+/info",
]


# --- the simulated devices on their own --------------------------------------------------------


def sensor(model: tuple[int, ...], seed: int = 7) -> EfentoSensor:
    return EfentoSensor(
        serial_for(seed, 0), model, random.Random(seed), measure_every=10, transmit_every=60
    )


@pytest.mark.parametrize("model", MODELS, ids=["th", "thp", "door"])
def test_efento_frames_decode_to_what_the_sensor_measured(model: tuple[int, ...]) -> None:
    """The codec reads back every sample the simulated sensor took, value and time."""
    simulated = sensor(model)
    start = 1_796_000_000
    simulated.measure(start)  # the first sample, then one every 10 s
    simulated.measure(start + 55)
    channels = range(len(model))
    measured = {(s.at, n): s.values[n] for s in simulated.held for n in channels}
    frame = simulated.measurements(start + 55)
    [decoded] = efento_codec.decode(frame, {"endpoint": "m"}, start + 56)
    assert decoded.device == simulated.id == serial_for(7, 0).hex().upper()
    assert decoded.kind == "efento"
    labels = {TEMPERATURE: "temperature", HUMIDITY: "humidity", PRESSURE: "atmospheric_pressure"}
    got = {}
    for reading in decoded.readings:
        number = reading.channel - 1
        if model[number] == OK_ALARM:
            assert reading.quantity == "open-close"
        else:
            assert reading.quantity == labels[model[number]]
        got[(int(reading.measured_at), number)] = reading.value
    assert got == measured
    assert len({at for at, _ in got}) == 6
    assert decoded.attributes["transfer_reason"] == 1  # first message after reset
    assert (
        decoded.attributes["measurement_configuration_hash"] == simulated.config.configuration_hash
    )
    assert 2.9 <= decoded.attributes["battery_voltage"] <= 3.6


def test_efento_values_are_plausible_and_drift() -> None:
    simulated = sensor((TEMPERATURE, HUMIDITY, PRESSURE))
    simulated.measure(1_796_000_000)
    simulated.measure(1_796_000_000 + 3600)
    temperatures = [s.values[0] for s in simulated.held]
    humidities = [s.values[1] for s in simulated.held]
    pressures = [s.values[2] for s in simulated.held]
    assert all(0 < t < 40 for t in temperatures) and len(set(temperatures)) > 5
    assert all(5 <= h <= 100 and h == int(h) for h in humidities)
    assert all(950 <= p <= 1050 for p in pressures)
    # Drifting, not jumping: neighbouring samples 10 s apart stay close.
    assert max(abs(a - b) for a, b in itertools.pairwise(temperatures)) < 1.0


def test_unacknowledged_samples_go_again_with_the_retry_count() -> None:
    simulated = sensor((TEMPERATURE, HUMIDITY))
    first = efento_codec.decode(simulated.measurements(1_796_000_000), {"endpoint": "m"}, 0)[0]
    simulated.not_acknowledged()
    again = efento_codec.decode(simulated.measurements(1_796_000_020), {"endpoint": "m"}, 0)[0]
    assert {r.key for r in first.readings} < {r.key for r in again.readings}
    assert again.attributes["transfer_reason"] == 1 | (1 << 3)
    simulated.acknowledged()
    later = efento_codec.decode(simulated.measurements(1_796_000_030), {"endpoint": "m"}, 0)[0]
    assert {int(r.measured_at) for r in later.readings} == {1_796_000_030}
    assert later.attributes["transfer_reason"] == 0


def test_efento_sensor_obeys_its_answers() -> None:
    """As the firmware does: a configuration request gets /c, a device info request /i, new
    settings are applied under a new hash and uploaded."""
    simulated = sensor((TEMPERATURE, HUMIDITY))
    old_hash = simulated.config.configuration_hash
    assert simulated.obey(b"") == []
    assert simulated.obey(bytes.fromhex("980101")) == ["c"]  # the seed server's reply
    assert simulated.config.configuration_hash == old_hash
    downlink = encode_config(
        {"measurement_period_base": 30, "transmission_interval": 300, "device_info_request": True,
         "current_time": 1_796_000_000}
    )  # fmt: skip
    assert simulated.obey(downlink) == ["c", "i"]
    assert simulated.config.configuration_hash == old_hash + 1
    assert (simulated.measure_every, simulated.transmit_every) == (30, 300.0)
    uploaded = ProtoConfig.FromString(simulated.configuration())
    assert uploaded.configuration_hash == old_hash + 1
    assert uploaded.measurement_period_base == 30 and not uploaded.device_info_request
    assert uploaded.serial_number == simulated.serial
    [decoded] = efento_codec.decode(simulated.configuration(), {"endpoint": "c"}, 0)
    assert decoded.attributes[efento_codec.HASH_ATTRIBUTE] == old_hash + 1


def test_device_ids_come_from_the_seed() -> None:
    assert serial_for(1, 0) == serial_for(1, 0) != serial_for(2, 0)
    assert serial_for(1, 0)[:3] == bytes.fromhex("282C02")
    assert token_for(1, 3) == token_for(1, 3) != token_for(1, 4)
    assert node_id(5, 0) == node_id(5, 0)
    kit = Kit(token_for(1, 0), random.Random(1))
    body = json.loads(kit.readings(1_796_000_000))
    [item] = body["data"]
    assert item["recorded_at"] == "2026-11-30T00:53:20Z"
    assert {s["id"] for s in item["sensors"]} == {10, 14, 53, 55, 56, 58, 87, 88, 89}


async def test_pacing_keeps_each_device_to_its_period_and_stops_at_once() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    pacer = Pacer(random.Random(1), stop, loop.time() + 1.0, clock=loop.time)
    sent: list[float] = []

    async def send() -> None:
        sent.append(loop.time())

    await pacer.run(lambda: 0.1, send)
    assert 4 <= len(sent) <= 12  # 1 s at 0.1 s ± 15 %, the first within one period
    assert all(0.08 <= b - a <= 0.3 for a, b in itertools.pairwise(sent))  # a busy loop: later
    assert period_for(8, 2.0) == 4.0

    stopping = Pacer(random.Random(1), stop, None, clock=loop.time)
    loop.call_later(0.3, stop.set)
    started = loop.time()
    await stopping.run(lambda: 60.0, send)
    assert loop.time() - started < 1.0


# --- where the traffic goes ----------------------------------------------------------------------


def test_the_built_in_settings_and_the_settings_said_to_add_give_every_target(
    tmp_path: Path,
) -> None:
    built_in = resolve(load_settings(None))
    assert built_in.missing == {}
    assert built_in.efento is not None and built_in.efento.where == "coap://127.0.0.1:5683"
    assert built_in.smartcitizen is not None and built_in.trapnet is not None
    bare = tmp_path / "bare.toml"
    bare.write_text('[http]\nlisten = "127.0.0.1:8080"\n')
    missing = resolve(load_settings(bare)).missing
    snippets = [text.split("\n\n")[1] for text in (missing["efento"], missing["trapnet"])]
    added = tmp_path / "added.toml"
    added.write_text("\n\n".join(snippets) + "\n")
    targets = resolve(load_settings(added))
    assert targets.efento is not None and targets.efento.where == "coap://127.0.0.1:5683"
    assert targets.trapnet is not None and targets.trapnet.prefix == "AKLC"


def test_addresses_given_replace_the_settings(tmp_path: Path) -> None:
    bare = tmp_path / "bare.toml"
    bare.write_text('[http]\nlisten = "127.0.0.1:8080"\n')
    targets = resolve(
        load_settings(bare), coap="10.0.0.5:5684", mqtt="broker:1884", http="http://x:1"
    )
    assert targets.efento is not None and targets.efento.where == "coap://10.0.0.5:5684"
    assert targets.trapnet is not None and targets.trapnet.where == "mqtt://broker:1884"
    assert targets.http == "http://x:1" and targets.missing == {}
    assert any(note.startswith("trapnet:") for note in targets.notes)
    with pytest.raises(ValueError, match="--coap"):
        resolve(load_settings(None), coap="nohost:port")


# --- against a running fieldbridge ---------------------------------------------------------------


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as running:
        yield running


def demo_service(tmp_path: Path, broker: Mosquitto, udp: int, **efento: Any) -> FieldbridgeProcess:
    url = f"mqtt://127.0.0.1:{broker.port}"
    sources = {
        "efento": [
            {"name": "efento", "listen": f"127.0.0.1:{udp}", "downlink_poll": 0.1, **efento}
        ],
        "mqtt": [
            {"name": "kits", "url": url, "topics": KIT_TOPICS, "codec": "smartcitizen"},
            {"name": "aklc", "url": url, "topics": ["AKLC/#", "EnvironmentalServices/#"],
             "codec": "trapnet"},
        ],
    }  # fmt: skip
    return FieldbridgeProcess(tmp_path / "fb", sources=sources)


def simulate(service: FieldbridgeProcess, *args: str, timeout: float = 60) -> dict[str, Any]:
    done = service.cli("simulate", *args, "--json", timeout=timeout)
    assert done.returncode == 0, done.stderr + done.stdout
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


async def stored(service: FieldbridgeProcess) -> dict[str, Any]:
    """Devices and readings through the store functions the CLI uses."""
    async with open_store(f"sqlite:///{service.db_path}") as store:
        devices = {d.id: d for d in await store.list_devices()}
        readings = {d: await store.list_readings(d, limit=1000) for d in devices}
    return {"devices": devices, "readings": readings}


async def test_simulate_fills_the_store_with_every_kind(tmp_path: Path, broker: Mosquitto) -> None:
    udp = free_udp_port()
    with demo_service(tmp_path, broker, udp) as service:
        await asyncio.to_thread(service.start)
        args = ("--efento", "2", "--smartcitizen", "2", "--trapnet", "2", "--duration", "5",
                "--rate", "8", "--seed", "42")  # fmt: skip
        summary = await asyncio.to_thread(simulate, service, *args)

        kinds = summary["kinds"]
        assert set(kinds) == {"efento", "smartcitizen", "trapnet"}
        for kind, tally in kinds.items():
            assert tally["failed"] == 0, (kind, tally)
            assert tally["acknowledged"] == tally["sent"] > 0, (kind, tally)
        assert summary["targets"]["efento"] == f"coap://127.0.0.1:{udp}"
        assert summary["targets"]["http"] == service.base_url
        efento_ids = kinds["efento"]["devices"]
        kit_ids = kinds["smartcitizen"]["devices"]
        trap_ids = kinds["trapnet"]["devices"]
        assert efento_ids == [serial_for(42, i).hex().upper() for i in range(2)]
        assert kit_ids == [token_for(42, i) for i in range(2)]
        assert len(trap_ids) == 3  # a gateway for the two nodes

        found = await stored(service)
        devices, readings = found["devices"], found["readings"]
        assert set(efento_ids + kit_ids + trap_ids) <= set(devices)
        for serial in efento_ids:
            assert devices[serial].kind == "efento"
            assert devices[serial].attributes["firmware"] == "07.02"  # its /i
            assert "configuration" in devices[serial].attributes  # its /c, asked for in a 2.01
            quantities = {r.reading.quantity for r in readings[serial]}
            assert "temperature" in quantities
        for token in kit_ids:
            assert devices[token].kind == "smartcitizen"
            assert "hardware_info" in devices[token].attributes
            assert {"temperature", "humidity", "pm_2_5", "battery"} <= {
                r.reading.quantity for r in readings[token]
            }
        gateway, *nodes = trap_ids
        assert devices[gateway].role is Role.GATEWAY
        for node in nodes:
            assert devices[node].kind == "trapnet" and devices[node].role is Role.NODE
            assert {"VBat", "RSSI"} <= {r.reading.quantity for r in readings[node]}
            assert devices[node].attributes["battery"] > 3
        quarantined = service.cli("quarantine", "list", "--json")
        assert json.loads(quarantined.stdout) == []

        # The same seed again: the same devices, more messages each.
        counts = {d: devices[d].message_count for d in efento_ids + kit_ids}
        again = await asyncio.to_thread(simulate, service, *args)
        assert again["kinds"]["efento"]["devices"] == efento_ids
        after = (await stored(service))["devices"]
        assert all(after[d].message_count > counts[d] for d in counts)
        assert set(after) == set(devices)


async def test_a_queued_downlink_reaches_a_simulated_sensor(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """Queued with the CLI (the console uses the same store function), carried in a 2.01,
    applied by the sensor, confirmed by its /c with the new hash."""
    with demo_service(tmp_path, broker, free_udp_port()) as service:
        await asyncio.to_thread(service.start)
        serial = serial_for(1, 0).hex().upper()
        running = await asyncio.create_subprocess_exec(
            FIELDBRIDGE, "--config", str(service.config_path), "simulate", "--efento", "1",
            "--smartcitizen", "0", "--trapnet", "0", "--duration", "0", "--rate", "2", "--json",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env(),
        )  # fmt: skip
        try:
            await asyncio.to_thread(
                wait_until,
                lambda: service.query("SELECT 1 FROM devices WHERE id = ?", (serial,)),
                "the simulated sensor in the registry",
            )
            queued = service.cli(
                "efento", "config", serial, "--set", "measurement_period_base=5", "--json"
            )
            assert queued.returncode == 0, queued.stderr
            downlink = json.loads(queued.stdout)["id"]

            def confirmed() -> bool:
                every = json.loads(service.cli("efento", "pending", "--all", "--json").stdout)
                return any(d["id"] == downlink and d["state"] == "confirmed" for d in every)

            await asyncio.to_thread(wait_until, confirmed, "the downlink confirmed", 30.0)
            device = json.loads(service.cli("devices", "show", serial, "--json").stdout)
            assert device["attributes"]["configuration"]["measurementPeriodBase"] == 5
        finally:
            running.terminate()  # SIGTERM: stops as Ctrl-C does, with its summary
            out, err = await asyncio.wait_for(running.communicate(), 30)
        assert running.returncode == 0, err.decode() + out.decode()
        summary = json.loads(out)
        assert summary["stopped"] is True
        assert summary["kinds"]["efento"]["failed"] == 0


async def test_the_simulators_frame_through_libcoap(tmp_path: Path, broker: Mosquitto) -> None:
    """A simulated /m frame posted by libcoap's coap-client: another CoAP stack, same answer."""
    udp = free_udp_port()
    simulated = sensor((TEMPERATURE, HUMIDITY), seed=99)
    frame = tmp_path / "m.bin"
    frame.write_bytes(simulated.measurements(1_796_000_000))
    with demo_service(tmp_path, broker, udp) as service:
        await asyncio.to_thread(service.start)
        log, payload = await coap_client(
            "-m", "post", "-f", str(frame), f"coap://127.0.0.1:{udp}/m"
        )
        assert answers_in(log) == ["2.01"]
        assert simulated.obey(payload) == ["c"]  # unknown hash: the source asks for /c
        readings = (await stored(service))["readings"][simulated.id]
        assert {(r.reading.quantity, int(r.reading.measured_at)) for r in readings} == {
            ("temperature", 1_796_000_000),
            ("humidity", 1_796_000_000),
        }


def test_not_running_names_the_target(tmp_path: Path) -> None:
    port = free_udp_port()
    config = tmp_path / "fb.toml"
    kits = {"name": "kits", "topics": KIT_TOPICS, "codec": "smartcitizen"}
    settings = {"http": {"listen": f"127.0.0.1:{port}"}, "sources": {"mqtt": [kits]}}
    config.write_text(to_toml(settings))
    done = run_cli("simulate", "--duration", "2", config=config)
    assert done.returncode == 1
    assert f"fieldbridge is not running at http://127.0.0.1:{port}" in done.stderr
    assert "efento skipped" in done.stderr and "[[sources.efento]]" in done.stderr


def test_nothing_to_send_when_no_source_takes_the_kinds(tmp_path: Path) -> None:
    config = tmp_path / "fb.toml"
    config.write_text(to_toml({"http": {"listen": "127.0.0.1:9"}}))
    done = run_cli("simulate", "--smartcitizen", "0", "--trapnet", "2", config=config)
    assert done.returncode == 2
    assert 'codec "trapnet"' in done.stderr and "nothing to send" in done.stderr


def test_plan_defaults_match_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "fieldbridge simulate --efento 3 --smartcitizen 2 --trapnet 3 --duration 120" in readme
    assert (Plan().efento, Plan().smartcitizen, Plan().trapnet, Plan().duration) == (3, 2, 3, 120)
