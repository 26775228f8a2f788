"""End to end: trap events on a real Mosquitto, a real `fieldbridge run` with codec trapnet and
a Trap.NZ sink, and a fake Trap.NZ that is down while the events arrive, then comes back."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import eventually
from tests.fakes.trapnz import Credentials, TrapNZServer
from tests.support.mqtt_broker import Mosquitto
from tests.support.processes import FieldbridgeProcess
from tests.support.trapnet_sim import TrapNetwork

CREDS = Credentials()
FLAGGED = ("Trap1", "Trap2", "Trap3")
# (node, Event, State) in publish order; the flagged ones must reach Trap.NZ in this order.
EVENTS = [(FLAGGED[n % 3], "H" if n % 4 == 0 else "T", "O" if n % 3 else "C") for n in range(12)]
SKIPPED = [("TrapOff", "T", "O"), ("Stranger", "T", "C"), ("Trap1", "Z", "O"), ("Trap2", "T", "?")]
EXPECTED_SKIPS = {"flag_off": 1, "unknown_device": 1, "bad_event": 1, "bad_state": 1}
SEED_EVENT = {"H": "Heartbeat", "O": "Set", "C": "Sprung"}


def seed_event(event: str, state: str) -> str:
    return SEED_EVENT["H"] if event == "H" else SEED_EVENT[state]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as running:
        yield running


@pytest.fixture
async def trapnz() -> AsyncIterator[TrapNZServer]:
    server = TrapNZServer(expires_in=3)  # not started: Trap.NZ is down
    yield server
    await server.__aexit__(None, None, None)
    assert server.violations == [], "fieldbridge broke the Trap.NZ contract"


def process(tmp_path: Path, broker: Mosquitto, trapnz: TrapNZServer) -> FieldbridgeProcess:
    source = {
        "name": "aklc",
        "url": broker.url,
        "client_id": "fieldbridge-trapnz-e2e",
        "topics": ["AKLC/#", "EnvironmentalServices/#"],
        "qos": 1,
        "codec": "trapnet",
    }
    sink = {
        "name": "trapnz",
        "token_url": trapnz.token_url,
        "url": trapnz.record_url,
        "client_id": CREDS.client_id,
        "client_secret": CREDS.client_secret,
        "username": CREDS.username,
        "password": CREDS.password,
        "route": {"flag": "trapnz"},
        "max_backoff": 1.0,
        "timeout": 2.0,
    }
    return FieldbridgeProcess(
        tmp_path / "svc",
        sources={"mqtt": [source]},
        sinks={"trapnz": [sink]},
        log={"level": "debug"},
    )


def cli_json(proc: FieldbridgeProcess, *args: str) -> Any:
    done = proc.cli(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def status(proc: FieldbridgeProcess) -> dict[str, Any]:
    [row] = await asyncio.to_thread(proc.sinks_status)
    return row


async def test_trap_events_reach_trap_nz_once_in_order_across_an_outage_and_token_expiry(
    tmp_path: Path, broker: Mosquitto, trapnz: TrapNZServer
) -> None:
    proc = process(tmp_path, broker, trapnz)
    await asyncio.to_thread(proc.start)
    try:
        await run(proc, broker, trapnz)
    finally:
        await asyncio.to_thread(proc.kill)
    log = proc.output()
    for secret in (CREDS.client_secret, CREDS.password, *trapnz.secrets_issued):
        assert secret not in log, "a secret reached fieldbridge's log"


async def run(proc: FieldbridgeProcess, broker: Mosquitto, trapnz: TrapNZServer) -> None:
    await eventually(lambda: "; subscribed to" in proc.output(), "the source is subscribed")
    for node in (*FLAGGED, "TrapOff"):
        await asyncio.to_thread(cli_json, proc, "devices", "add", node)
    for node in FLAGGED:
        await asyncio.to_thread(cli_json, proc, "devices", "set", node, "--flag", "trapnz=on")

    # Trap.NZ is down while every event arrives.
    with TrapNetwork(broker.port) as net:
        for node, ev, state in EVENTS[:6]:
            net.trap_event(node, ev, state, Gateway="GW1", VBat=3.7)
        for node, ev, state in SKIPPED:
            net.trap_event(node, ev, state)
        for node, ev, state in EVENTS[6:]:
            net.trap_event(node, ev, state)
        await asyncio.to_thread(net.wait_acknowledged)

    async def backing_off() -> dict[str, Any] | None:
        row = await status(proc)
        waiting = row["state"] in ("backoff", "failing") and row["lag_messages"] >= 16
        return row if waiting and row["auth"] and row["auth"]["failures"] >= 2 else None

    row = await eventually(backing_off, "the sink backing off, its token failures noted", 30)
    assert "unreachable" in row["last_error"], row
    assert "unreachable" in row["auth"]["last_error"]
    async with httpx.AsyncClient() as client:
        health = (await client.get(f"{proc.base_url}/healthz")).json()
    shown = health["sinks"]["trapnz"]
    assert shown["state"] in ("backoff", "failing") and shown["auth"]["state"] == "failing"
    assert shown["auth"]["failures"] >= 2 and "unreachable" in shown["auth"]["last_error"]
    assert trapnz.requests == []

    # Trap.NZ comes back: everything goes, once, in order, with the time it was received.
    back_at = time.time()
    await trapnz.start()
    await trapnz.wait_for(lambda: len(trapnz.records) == len(EVENTS), within=30)
    sent = [(r.dev_id, r.event) for r in trapnz.records]
    assert sent == [(node, seed_event(ev, state)) for node, ev, state in EVENTS]
    assert all(r.time.timestamp() < back_at for r in trapnz.records), "the event time is kept"
    times = [r.time for r in trapnz.records]
    assert times == sorted(times)
    assert [r.fields.get("field_gateway") for r in trapnz.records[:7]] == ["GW1"] * 6 + [None]
    assert trapnz.grants("password") == 1

    # Tokens live 3 s: each later event finds its token expired and the sink renews it with
    # the (rotated) refresh token, never the password again.
    with TrapNetwork(broker.port) as net:
        for round_ in range(3):
            await eventually(trapnz.tokens_expired, "the token expired", 10)
            net.trap_event("Trap1", "H", "O")
            await trapnz.wait_for(lambda n=round_: len(trapnz.records) == len(EVENTS) + n + 1)
    assert trapnz.grants("password") == 1
    assert trapnz.grants("refresh_token") >= 3
    assert trapnz.counts["refused:refresh_token"] == 0

    # A restart uses the kept refresh token: still one password grant.
    await asyncio.to_thread(proc.terminate)
    assert await asyncio.to_thread(proc.wait, 20) == 0
    await asyncio.to_thread(proc.start)
    await eventually(lambda: "; subscribed to" in proc.output_since_start(), "subscribed again")
    with TrapNetwork(broker.port) as net:
        net.trap_event("Trap2", "T", "C")
        await asyncio.to_thread(net.wait_acknowledged)
    await trapnz.wait_for(lambda: len(trapnz.records) == len(EVENTS) + 4, within=30)
    assert (trapnz.records[-1].dev_id, trapnz.records[-1].event) == ("Trap2", "Sprung")
    assert trapnz.grants("password") == 1, "the kept refresh token spared the password grant"

    keys = [(r.dev_id, r.time) for r in trapnz.records]
    assert len(keys) == len(set(keys)), "every event uploaded once"
    row = await status(proc)
    assert row["skipped"] == EXPECTED_SKIPS
    assert row["auth"]["state"] == "ok" and row["auth"]["failures"] == 0
    assert row["lag_messages"] == 0 and row["dead_letters"] == 0
