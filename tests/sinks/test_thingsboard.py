"""The ThingsBoard sink: readings through ingest and the sink engine to a fake ThingsBoard built
on a real Mosquitto (tests/fakes/thingsboard.py) or a fake HTTP device API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from pydantic import ValidationError

from fieldbridge.codecs import http_json
from fieldbridge.ingest import Ingest
from fieldbridge.model import Accepted, SinkRunState
from fieldbridge.plugin import RouteSettings
from fieldbridge.sinks.engine import SinkRunner
from fieldbridge.sinks.thingsboard import ThingsBoardDestination
from fieldbridge.sinks.thingsboard_settings import ThingsBoardSettings
from fieldbridge.store import Store
from tests.conftest import eventually, wait_until
from tests.fakes.thingsboard import FakeThingsBoard
from tests.fakes.thingsboard_http import FakeThingsBoardHttp
from tests.support.sinks import run_sink

SINK = "tb"
GATEWAY_TOKEN = "GwT0ken4fieldbridge"
T0 = 1_764_800_000.0  # 2025-12-03, seconds; each message n is measured at T0 + n


def message(device: str, n: int, kind: str | None = "trap") -> bytes:
    body: dict[str, Any] = {
        "device": device,
        "ts": T0 + n,
        "readings": {"level": n, "temp": {"value": n / 10, "channel": 2}},
        "id": f"{device}-{n}",
    }
    if kind:
        body["kind"] = kind
    return json.dumps(body).encode()


async def ingest(store: Store, payloads: list[bytes]) -> list[int]:
    """Messages through the real ingest path (codec http-json); their journal ids."""
    ids: list[int] = []
    async with Ingest(store) as feed:
        for payload in payloads:
            outcome = await feed.submit("http", payload, http_json.decode, {})
            assert isinstance(outcome, Accepted), outcome
            ids.extend(outcome.ids)
    return ids


def settings(url: str, **overrides: Any) -> ThingsBoardSettings:
    values: dict[str, Any] = {
        "name": SINK,
        "url": url,
        "mode": "gateway",
        "token": GATEWAY_TOKEN,
        "timeout": 5.0,
        "max_backoff": 0.5,
        "route": RouteSettings(flag="thingsboard"),
    }
    values.update(overrides)
    return ThingsBoardSettings(**values)


@contextlib.asynccontextmanager
async def running(store: Store, sink: ThingsBoardSettings) -> AsyncIterator[SinkRunner]:
    runner = SinkRunner(
        "thingsboard", sink, ThingsBoardDestination(sink), store, backoff_base=0.05, idle_poll=0.1
    )
    async with run_sink(runner):
        yield runner


async def cursor_is(store: Store, value: int, within: float = 30.0) -> None:
    async def check() -> bool:
        return (await store.sink_state(SINK)).cursor == value

    await eventually(check, f"the cursor at {value}", timeout=within)


async def flag(store: Store, *devices: str) -> None:
    for device in devices:
        await store.update_device(device, flags={"thingsboard": True})


@pytest.fixture
def tb(tmp_path: Path) -> Iterator[FakeThingsBoard]:
    with FakeThingsBoard(tmp_path / "tb", gateway_tokens={GATEWAY_TOKEN: "gw"}) as fake:
        yield fake
    assert fake.violations == [], "fieldbridge broke the ThingsBoard contract"


def expected(n: int) -> dict[str, float]:
    return {"level": float(n), "temp_2": n / 10}


async def test_gateway_sends_flagged_devices_with_ms_time_and_attributes(
    store: Store, tb: FakeThingsBoard
) -> None:
    payloads = [message(d, n) for n in range(40) for d in ("trap-a", "trap-b", "trap-c")]
    ids = await ingest(store, payloads)
    await flag(store, "trap-a", "trap-b")  # trap-c's flag stays off
    await store.update_device("trap-a", attributes={"place": "Hunua", "secret": "x"})
    async with running(store, settings(tb.url, batch_size=25, attributes=["place"])):
        await cursor_is(store, ids[-1])
    for device in ("trap-a", "trap-b"):
        series = tb.series(device)
        assert series == {round((T0 + n) * 1000): expected(n) for n in range(40)}
        assert tb.recorded.created[device] == "trap"  # announced on v1/gateway/connect
    assert tb.series("trap-c") == {}
    assert "trap-c" not in tb.recorded.created
    assert tb.recorded.attributes == {"trap-a": {"place": "Hunua"}}
    assert await store.count_dead_letters(SINK) == 0


async def test_bad_gateway_token_keeps_messages_and_shows_failing(
    store: Store, tb: FakeThingsBoard, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ids = await ingest(store, [message("trap-a", n) for n in range(3)])
    await flag(store, "trap-a")
    wrong = "NotTheGatewayToken"
    async with running(store, settings(tb.url, token=wrong)) as runner:

        async def failing() -> bool:
            state = await store.sink_state(SINK)
            return state.state == SinkRunState.FAILING

        await eventually(failing, "the sink failing")
        state = await store.sink_state(SINK)
        assert state.cursor == 0
        assert "refused the gateway token (CONNACK 5)" in (state.last_error or "")
        assert runner.state == SinkRunState.FAILING
    assert await store.count_dead_letters(SINK) == 0
    assert tb.series("trap-a") == {}
    assert wrong not in caplog.text and GATEWAY_TOKEN not in caplog.text
    # The operator fixes the token: everything kept is delivered.
    async with running(store, settings(tb.url)):
        await cursor_is(store, ids[-1])
    assert len(tb.series("trap-a")) == 3


async def test_broker_stopped_mid_batch_loses_nothing(store: Store, tb: FakeThingsBoard) -> None:
    count = 1500
    payloads = [message(d, n) for n in range(count) for d in ("trap-a", "trap-b")]
    ids = await ingest(store, payloads)
    await flag(store, "trap-a", "trap-b")
    async with running(store, settings(tb.url, batch_size=100)) as runner:
        await eventually(lambda: len(tb.series("trap-a")) >= 100, "the first points")
        # SIGTERM mid-batch: the sink's connection dies with publishes in flight; Mosquitto
        # keeps what it acknowledged, as ThingsBoard's database does (a SIGKILL would also
        # lose what Mosquitto acknowledged but had not saved: the broker's loss, not the sink's).
        await asyncio.to_thread(tb.stop)
        await eventually(
            lambda: runner.state == SinkRunState.BACKOFF, "the sink backing off", timeout=30
        )
        cursor = (await store.sink_state(SINK)).cursor
        assert cursor < ids[-1]
        await asyncio.to_thread(tb.restart)
        await cursor_is(store, ids[-1], within=60)
    whole = {round((T0 + n) * 1000): expected(n) for n in range(count)}
    for device in ("trap-a", "trap-b"):
        # No gap: every measured time of every message is in the timeseries, with its values.
        # The fake's subscriber sees a point after the broker acknowledged it to the sink.
        await eventually(
            lambda device=device: len(tb.series(device)) >= count, f"{device}'s last points"
        )
        assert tb.series(device) == whole


async def test_hung_broker_times_out_and_resends(store: Store, tb: FakeThingsBoard) -> None:
    """No PUBACK within `timeout`: the connection is dropped, the batch kept and resent."""
    first = await ingest(store, [message("trap-a", n) for n in range(3)])
    await flag(store, "trap-a")
    async with running(store, settings(tb.url, timeout=1.0)) as runner:
        await cursor_is(store, first[-1])
        tb.broker.freeze()
        try:
            second = await ingest(store, [message("trap-a", n) for n in range(3, 6)])

            async def timed_out() -> bool:
                state = await store.sink_state(SINK)
                return "no PUBACK of" in (state.last_error or "")

            await eventually(timed_out, "the PUBACK deadline")
            assert runner.state in (SinkRunState.BACKOFF, SinkRunState.RUNNING)
            assert (await store.sink_state(SINK)).cursor == first[-1]
        finally:
            tb.broker.thaw()
        await cursor_is(store, second[-1])
    assert tb.series("trap-a") == {round((T0 + n) * 1000): expected(n) for n in range(6)}


async def test_rate_limit_notice_backs_off_and_resends(
    store: Store, tb: FakeThingsBoard, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    first = await ingest(store, [message("trap-a", n) for n in range(5)])
    await flag(store, "trap-a")
    async with running(store, settings(tb.url)):
        await cursor_is(store, first[-1])
        await asyncio.to_thread(tb.rate_limit, "trap-a")
        await eventually(lambda: "rate limit reached for trap-a" in caplog.text, "the notice")
        second = await ingest(store, [message("trap-a", n) for n in range(5, 10)])
        await eventually(lambda: "disconnect reason 150 for trap-a" in caplog.text, "the back-off")
        await cursor_is(store, second[-1])
    assert tb.series("trap-a") == {round((T0 + n) * 1000): expected(n) for n in range(10)}


async def test_any_source_and_kinds_route(store: Store, tb: FakeThingsBoard) -> None:
    """A kinds route takes devices without any flag; a message without a kind connects the
    device without a type (ThingsBoard's default profile)."""
    ids = await ingest(
        store,
        [
            message("sck-1", 1, kind="smartcitizen"),
            message("efento-1", 2, kind="efento"),
            message("plain", 3, kind=None),
        ],
    )
    route = RouteSettings(kinds=["smartcitizen", ""])
    async with running(store, settings(tb.url, route=route)):
        await cursor_is(store, ids[-1])
    assert tb.series("sck-1") == {round((T0 + 1) * 1000): expected(1)}
    assert tb.series("plain") == {round((T0 + 3) * 1000): expected(3)}
    assert tb.series("efento-1") == {}
    assert tb.recorded.created == {"sck-1": "smartcitizen", "plain": None}


def test_fake_answers_session_limits_over_mqtt5(tb: FakeThingsBoard) -> None:
    """ThingsBoard IoT Gateway (the benchmark's peer) asks getSessionLimits, over MQTT 5,
    before it sends anything; the fake answers it on the matching id."""
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id="peer", protocol=MQTTProtocolVersion.MQTTv5
    )
    client.username_pw_set(GATEWAY_TOKEN, "")
    answers: list[tuple[str, dict[str, Any]]] = []
    client.on_message = lambda c, u, m: answers.append((m.topic, json.loads(m.payload)))
    client.on_connect = lambda c, *a: c.subscribe("v1/devices/me/rpc/response/+", 1)
    client.connect("127.0.0.1", tb.port)
    client.loop_start()
    try:
        wait_until(lambda: client.is_connected(), "the gateway connected")
        request = json.dumps({"method": "getSessionLimits", "params": {"timeout": 5000}})
        wait_until(
            lambda: (
                client.publish("v1/devices/me/rpc/request/7", request, 1).rc == 0 and bool(answers)
            ),
            "the session limits",
        )
    finally:
        client.disconnect()
        client.loop_stop()
    topic, answer = answers[0]
    assert topic == "v1/devices/me/rpc/response/7"
    assert answer["maxInflightMessages"] == 100


def test_settings_check_mode_url_and_token() -> None:
    with pytest.raises(ValidationError, match="gateway mode needs the access token"):
        ThingsBoardSettings(name="t", url="mqtt://127.0.0.1:1883")
    with pytest.raises(ValidationError, match="mode 'http' needs a http:// or https:// url"):
        ThingsBoardSettings(name="t", url="mqtt://127.0.0.1:1883", mode="http")
    with pytest.raises(ValidationError, match="no credentials or query"):
        ThingsBoardSettings(name="t", url="mqtt://user:pw@127.0.0.1:1883", token="x")
    shown = ThingsBoardSettings(name="t", url="mqtt://h:1", token="s3cret").model_dump(mode="json")
    assert shown["token"] == "**********"


TOKENS = {"TokA1": "trap-a", "TokB2": "trap-b"}


async def tokens_and_flags(store: Store) -> None:
    """trap-a and trap-b have good tokens, trap-c a wrong one, trap-d none."""
    await flag(store, "trap-a", "trap-b", "trap-c", "trap-d")
    for token, device in TOKENS.items():
        await store.update_device(device, attributes={"thingsboard_token": token})
    await store.update_device("trap-c", attributes={"thingsboard_token": "WrongTok"})
    await store.update_device("trap-a", attributes={"place": "Hunua"})


async def check_dead_letters(store: Store, ids: list[int], answer: str) -> None:
    """trap-c's and trap-d's messages (every 3rd and 4th of each four) are dead letters."""
    dead = {d.message_id: d for d in await store.list_dead_letters(sink=SINK)}
    assert sorted(dead) == sorted(ids[i] for i in range(len(ids)) if i % 4 in (2, 3))
    for i, message_id in enumerate(ids):
        if i % 4 == 2:
            assert f"refused the token of device trap-c ({answer})" in dead[message_id].body
        elif i % 4 == 3:
            assert "trap-d has no thingsboard_token attribute" in dead[message_id].body


async def test_device_mode_bad_token_dead_letters_that_device_only(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    devices = ("trap-a", "trap-b", "trap-c", "trap-d")
    ids = await ingest(store, [message(d, n) for n in range(30) for d in devices])
    await tokens_and_flags(store)
    with FakeThingsBoard(tmp_path / "tb", device_tokens=TOKENS) as tb:
        sink = settings(tb.url, mode="device", token=None, batch_size=20, attributes=["place"])
        async with running(store, sink):
            await cursor_is(store, ids[-1])
        assert tb.violations == []
        for device in ("trap-a", "trap-b"):
            assert tb.series(device) == {round((T0 + n) * 1000): expected(n) for n in range(30)}
        assert tb.recorded.attributes == {"trap-a": {"place": "Hunua"}}
    await check_dead_letters(store, ids, "CONNACK 5")
    assert not any(t in caplog.text for t in [*TOKENS, "WrongTok"])


async def test_http_mode_token_in_path_and_bad_token_dead_lettered(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    # fieldbridge's own logs; httpx logs request URLs (with the token) at INFO, and fieldbridge
    # keeps it at WARNING (logs.py).
    caplog.set_level(logging.DEBUG, logger="fieldbridge")
    devices = ("trap-a", "trap-b", "trap-c", "trap-d")
    ids = await ingest(store, [message(d, n) for n in range(30) for d in devices])
    await tokens_and_flags(store)
    async with FakeThingsBoardHttp(TOKENS) as tb:
        sink = settings(tb.url, mode="http", token=None, batch_size=20, attributes=["place"])
        async with running(store, sink):
            await cursor_is(store, ids[-1])
    assert tb.violations == []
    for device in ("trap-a", "trap-b"):
        assert tb.timeseries[device] == {round((T0 + n) * 1000): expected(n) for n in range(30)}
    assert tb.attributes == {"trap-a": {"place": "Hunua"}}
    assert tb.refused and all("/WrongTok/" in path for path in tb.refused)
    await check_dead_letters(store, ids, "HTTP 401")
    assert not any(t in caplog.text for t in [*TOKENS, "WrongTok"])
