"""The ThingWorx sink: real Efento frames through ingest and the sink engine to a fake ThingWorx."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from fieldbridge.codecs import efento, http_json
from fieldbridge.codecs.efento.proto.config_pb2 import ProtoConfig
from fieldbridge.config import load_settings
from fieldbridge.ingest import Ingest
from fieldbridge.model import Accepted, Downlink
from fieldbridge.plugin import RouteSettings
from fieldbridge.sinks.engine import SinkRunner
from fieldbridge.sinks.thingworx import ThingWorxDestination, ThingWorxSettings
from fieldbridge.sinks.thingworx_calls import remote_configuration
from fieldbridge.store import Store
from tests.conftest import eventually
from tests.fakes.thingworx import (
    CONFIGURATION,
    DEVICE_INFO,
    MEASUREMENT,
    Reply,
    Thing,
    ThingWorxServer,
)
from tests.support import paths
from tests.support.processes import FieldbridgeProcess, run_cli
from tests.support.sinks import run_sink

COAP_CLIENT = shutil.which("coap-client-notls") or "coap-client-notls"

FIXTURES = paths.FIXTURES / "efento"
APP_KEY = "5c1e9a70-2b8f-4d3e-a6c1-9f0b7e2d4a18"
THING = "EfentoGateway"
SERVICES = {
    "SendMeasurement": MEASUREMENT,
    "CheckConfig": CONFIGURATION,
    "SendInfoDevice": DEVICE_INFO,
}
SINK = "twx"
SOURCE = "efento"
SEED_M, SEED_I, SEED_C = "282C024156AF", "282C024156AF", "282C0240FD34"


def seed_frames() -> dict[str, dict[str, Any]]:
    frames = json.loads((FIXTURES / "seed_frames.json").read_text())["frames"]
    return {f["endpoint"]: f for f in frames}


def vectors() -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads((FIXTURES / "vectors.json").read_text())
    return data


SEED = seed_frames()


def frame(endpoint: str) -> bytes:
    return bytes.fromhex(SEED[endpoint]["hex"])


@pytest.fixture
async def twx() -> AsyncIterator[ThingWorxServer]:
    async with ThingWorxServer(APP_KEY, {THING: Thing(SERVICES)}) as server:
        yield server
    assert server.violations == [], "fieldbridge broke the ThingWorx contract"


def settings(url: str, **overrides: Any) -> ThingWorxSettings:
    values: dict[str, Any] = {
        "name": SINK,
        "url": url,
        "app_key": APP_KEY,
        "thing": THING,
        "max_backoff": 0.3,
        "timeout": 2.0,
    }
    values.update(overrides)
    return ThingWorxSettings(**values)


async def ingest(store: Store, frames: Sequence[tuple[str, bytes]], **meta: Any) -> list[int]:
    """Efento frames through the real ingest path (codec "efento"); their journal ids."""
    ids: list[int] = []
    async with Ingest(store) as feed:
        for endpoint, payload in frames:
            outcome = await feed.submit(
                SOURCE, payload, efento.decode, {"endpoint": endpoint, **meta}
            )
            assert isinstance(outcome, Accepted), outcome
            ids.extend(outcome.ids)
    return ids


@contextlib.asynccontextmanager
async def running(store: Store, sink: ThingWorxSettings) -> AsyncIterator[SinkRunner]:
    # A short first back-off and idle poll keep each test to a second.
    runner = SinkRunner(
        "thingworx", sink, ThingWorxDestination(sink), store, backoff_base=0.05, idle_poll=0.1
    )
    async with run_sink(runner):
        yield runner


async def cursor_is(store: Store, value: int) -> None:
    async def check() -> bool:
        return (await store.sink_state(SINK)).cursor == value

    await eventually(check, f"the cursor at {value}")


async def queued_downlinks(store: Store) -> list[Downlink]:
    downlinks = await store.pending_downlinks()
    assert all(d.state == "queued" for d in downlinks), downlinks
    return downlinks


def seed_minus_bugs(seed_output: str) -> dict[str, Any]:
    """The seed's /m JSON with its two documented bugs undone: Lisbon summer time printed as
    UTC (one hour ahead in September) and signal 0 instead of field 7 (12)."""
    data: dict[str, Any] = json.loads(seed_output)
    for row in data["measurements"]:
        for key in ("measured_at", "next_measurement_at"):
            at = datetime.strptime(row[key], "%Y-%m-%d %H:%M:%S UTC") - timedelta(hours=1)
            row[key] = at.strftime("%Y-%m-%d %H:%M:%S UTC")
        row["signal"] = 12
    return data


# --- every frame, in the seed's shapes ----------------------------------------------------------


async def test_every_frame_reaches_thingworx_in_the_seed_shapes(
    store: Store, twx: ThingWorxServer
) -> None:
    frames = [("m", frame("m")), ("i", frame("i")), ("c", frame("c"))]
    frames += [(v["endpoint"].strip("/"), bytes.fromhex(v["hex"])) for v in vectors()]
    ids = await ingest(store, frames)
    assert len(ids) == len(frames)

    async with running(store, settings(twx.url)):
        await cursor_is(store, ids[-1])

    # One call per frame, in journal order, each to the service of its endpoint.
    services = {"m": "SendMeasurement", "i": "SendInfoDevice", "c": "CheckConfig"}
    assert [c.path for c in twx.calls] == [
        f"/Thingworx/Things/{THING}/Services/{services[endpoint]}" for endpoint, _ in frames
    ]
    for call in twx.calls:
        assert call.status == 200 and call.method == "POST"
        assert call.headers["appkey"] == APP_KEY
        assert call.headers["content-type"] == "application/json"
        assert call.headers["accept"] == "application/json"

    m, i, c, *vector_calls = twx.calls
    # /m: {"payload": "<JSON text>"}: the seed's rows with real UTC and the real signal.
    assert isinstance(m.params["payload"], str)
    assert json.loads(m.params["payload"]) == seed_minus_bugs(SEED["m"]["seed_output"])
    # /i: {"deviceJson": "<JSON text>"} with serialNum as upper-case hex, not base64.
    assert isinstance(i.params["deviceJson"], str)
    info = json.loads(SEED["i"]["seed_output"])
    assert info["serialNum"] == "KCwCQVav"
    assert json.loads(i.params["deviceJson"]) == {**info, "serialNum": SEED_I}
    # /c: {"device": "<SERIAL>", "configuration": {...}}, a real object.
    assert c.params == {"device": SEED_C, "configuration": json.loads(SEED["c"]["seed_output"])}
    for vector, call in zip(vectors(), vector_calls, strict=True):
        expected = vector["expected"]
        if vector["endpoint"] == "/m":
            assert json.loads(call.params["payload"]) == expected, vector["name"]
        else:
            serial = bytes.fromhex(vector["hex"])[2:8].hex().upper()
            assert json.loads(call.params["deviceJson"]) == {**expected, "serialNum": serial}
    assert await store.count_dead_letters(SINK) == 0
    assert await queued_downlinks(store) == []


async def test_thing_per_device_and_an_unknown_thing_is_dead_lettered(store: Store) -> None:
    known = f"Efento_{SEED_M}"
    async with ThingWorxServer(APP_KEY, {known: Thing(SERVICES)}) as twx:
        ids = await ingest(store, [("m", frame("m")), ("c", frame("c")), ("i", frame("i"))])
        async with running(store, settings(twx.url, thing="Efento_{device}")):
            await cursor_is(store, ids[-1])
        # The /c frame's sensor has no Thing: 404, a permanent refusal of that frame alone
        # (asked again while the engine bisects the batch down to it; a 404 changes nothing).
        taken = [(c.thing, c.role) for c in twx.received]
        assert taken == [(known, MEASUREMENT), (known, DEVICE_INFO)]
        refused = [c for c in twx.calls if c.status != 200]
        assert refused and {(c.thing, c.status) for c in refused} == {(f"Efento_{SEED_C}", 404)}
        assert set(twx.violations) == {
            f"POST /Thingworx/Things/Efento_{SEED_C}/Services/CheckConfig: "
            f"Thing 'Efento_{SEED_C}' not found"
        }
    dead = await store.list_dead_letters(sink=SINK)
    assert [(d.message_id, d.status) for d in dead] == [(ids[1], 404)]
    assert "not found" in dead[0].body


async def test_a_split_configuration_is_sent_once_and_whole(
    store: Store, twx: ThingWorxServer
) -> None:
    serial = bytes.fromhex(SEED_C)
    first = ProtoConfig(
        serial_number=serial,
        payload_split_info=-1,
        measurement_period_base=60,
        configuration_hash=9,
    ).SerializeToString()
    last = ProtoConfig(
        serial_number=serial, payload_split_info=2, transmission_interval=900
    ).SerializeToString()
    # As the Efento source stores them: each part as it arrives (the last part alone when the
    # earlier ones were lost), then the assembled configuration marked with its part count.
    ids = await ingest(store, [("c", first), ("c", last)])
    ids += await ingest(store, [("c", first + last)], split_parts=2)
    async with running(store, settings(twx.url, route=RouteSettings())):
        await cursor_is(store, ids[-1])
    (call,) = twx.calls
    assert call.role == CONFIGURATION and call.params["device"] == SEED_C
    configuration = call.params["configuration"]
    assert (configuration["measurementPeriodBase"], configuration["transmissionInterval"]) == (
        60,
        900,
    )
    assert (configuration["hash"], configuration["payloadSplitInfo"]) == (9, 2)
    assert await store.count_dead_letters(SINK) == 0


# --- failures -----------------------------------------------------------------------------------


async def test_5xx_is_retried_without_calling_again_for_frames_already_taken(
    store: Store, twx: ThingWorxServer
) -> None:
    ids = await ingest(store, [("m", frame("m")), ("i", frame("i")), ("c", frame("c"))])
    # The second frame of the batch fails twice: the batch is retried, but ThingWorx takes no
    # idempotency key, so the frame it already took must not be sent again.
    twx.script(DEVICE_INFO, Reply(500, json={"error": "script threw"}), Reply(503))
    async with running(store, settings(twx.url)):
        await cursor_is(store, ids[-1])
    assert [(c.role, c.status) for c in twx.calls] == [
        (MEASUREMENT, 200),
        (DEVICE_INFO, 500),
        (DEVICE_INFO, 503),
        (DEVICE_INFO, 200),
        (CONFIGURATION, 200),
    ]
    assert await store.count_dead_letters(SINK) == 0


async def test_401_backs_off_until_the_key_is_right_and_never_dead_letters(
    store: Store, twx: ThingWorxServer
) -> None:
    ids = await ingest(store, [("m", frame("m")), ("c", frame("c"))])
    twx.app_key = "a-rotated-key"  # the configured key is no longer valid
    async with running(store, settings(twx.url)):
        await twx.wait_for(lambda: len(twx.answered(401)) >= 3)
        state = await store.sink_state(SINK)
        assert (state.state, state.cursor) == ("failing", 0)
        assert state.last_error is not None and "HTTP 401" in state.last_error
        twx.app_key = APP_KEY
        await cursor_is(store, ids[-1])
    assert twx.unauthorized >= 3
    assert [c.role for c in twx.received] == [MEASUREMENT, CONFIGURATION]
    assert await store.count_dead_letters(SINK) == 0


async def test_a_thingworx_refusing_every_frame_is_failing_and_dead_letters_none(
    store: Store, twx: ThingWorxServer
) -> None:
    # A wrong base URL or a server without the Things answers 404 to every frame: that is the
    # destination failing, so the frames wait for it instead of going to the dead letters.
    ids = await ingest(store, [("m", frame("m")), ("i", frame("i")), ("c", frame("c"))])
    twx.fail(404)
    async with running(store, settings(twx.url)):
        await twx.wait_for(lambda: len(twx.answered(404)) >= 8)

        async def failing() -> bool:
            state = await store.sink_state(SINK)
            return state.state == "failing" and "HTTP 404" in (state.last_error or "")

        await eventually(failing, "the sink failing with the 404")
        assert (await store.sink_state(SINK)).cursor == 0
        assert await store.count_dead_letters(SINK) == 0
        twx.recover()
        await cursor_is(store, ids[-1])
    # Every frame once; one refused while the server was down may come after the probe that
    # found it up.
    assert sorted(c.role for c in twx.received) == sorted([MEASUREMENT, DEVICE_INFO, CONFIGURATION])
    assert await store.count_dead_letters(SINK) == 0
    assert (await store.sink_state(SINK)).last_error is None


async def test_server_failure_then_recovery(store: Store, twx: ThingWorxServer) -> None:
    ids = await ingest(store, [("m", frame("m"))])
    twx.fail(500, times=2)
    twx.script(MEASUREMENT, Reply(401))  # after the outage, one more refusal of the key
    async with running(store, settings(twx.url)):
        await cursor_is(store, ids[-1])
    assert [c.status for c in twx.calls] == [500, 500, 401, 200]
    assert await store.count_dead_letters(SINK) == 0


async def test_a_message_that_is_not_an_efento_frame_is_dead_lettered(
    store: Store, twx: ThingWorxServer
) -> None:
    # A route that takes every kind lets other messages in; they cannot be rendered.
    async with Ingest(store) as feed:
        other = await feed.submit(
            "http", b'{"device": "pump-1", "readings": {"temperature": 21.5}}', http_json.decode
        )
    assert isinstance(other, Accepted)
    ids = await ingest(store, [("m", frame("m"))])
    async with running(store, settings(twx.url, route=RouteSettings())):
        await cursor_is(store, ids[-1])
    dead = await store.list_dead_letters(sink=SINK)
    assert [d.message_id for d in dead] == list(other.ids)
    assert f"message {other.ids[0]} (kind None) is not an Efento frame" in dead[0].body
    assert "route.kinds" in dead[0].body
    assert [c.role for c in twx.calls] == [MEASUREMENT]


# --- RemoteConfiguration -------------------------------------------------------------------------


async def test_remote_configuration_becomes_one_queued_downlink(
    store: Store, twx: ThingWorxServer
) -> None:
    remote = {
        "serialNumber": SEED_M,
        "flag": True,
        "measurementPeriodBase": 60,
        "transmissionInterval": 900,
        "ackInterval": None,
    }
    answer = Reply(json={"status": 200, "RemoteConfiguration": remote})
    # ThingWorx asks again on every frame until the sensor has it: one downlink per sensor.
    twx.script(MEASUREMENT, answer, answer, answer)
    vector = bytes.fromhex(vectors()[0]["hex"])
    ids = await ingest(store, [("m", frame("m")), ("m", vector), ("m", frame("m"))])
    async with running(store, settings(twx.url)):
        await cursor_is(store, ids[-1])
    assert [c.status for c in twx.calls] == [200, 200, 200]

    queued = await queued_downlinks(store)
    assert [d.device for d in queued] == [SEED_M, "282C0241A001"]
    config = ProtoConfig.FromString(queued[0].payload)
    assert [f.name for f, _ in config.ListFields()] == [
        "measurement_period_base",
        "transmission_interval",
    ]
    assert (config.measurement_period_base, config.transmission_interval) == (60, 900)
    assert queued[1].payload == queued[0].payload
    assert (queued[0].origin, queued[0].fields, queued[0].expect_hash_change) == (
        "thingworx",
        {"measurementPeriodBase": 60, "transmissionInterval": 900},
        True,
    )
    assert queued[0].meta == {"sink": SINK, "message_id": ids[0]}
    assert await store.count_dead_letters(SINK) == 0


async def test_a_request_only_remote_configuration_expects_no_hash_change(
    store: Store, twx: ThingWorxServer
) -> None:
    remote = {"requestDeviceInfo": True, "requestConfiguration": True}
    twx.script(MEASUREMENT, Reply(json={"status": 200, "RemoteConfiguration": remote}))
    ids = await ingest(store, [("m", frame("m"))])
    async with running(store, settings(twx.url)):
        await cursor_is(store, ids[-1])
    (queued,) = await queued_downlinks(store)
    config = ProtoConfig.FromString(queued.payload)
    assert (config.device_info_request, config.configuration_request) == (True, True)
    assert queued.expect_hash_change is False


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(Reply(json={"status": 500, "RemoteConfiguration": {"ackInterval": 180}}),
                     id="status-not-200"),
        pytest.param(Reply(json={"status": 200}), id="no-remote-configuration"),
        pytest.param(Reply(json={"status": 200, "RemoteConfiguration": {"flag": False}}),
                     id="only-flag"),
        pytest.param(Reply(text="OK"), id="not-json"),
        pytest.param(Reply(), id="empty"),
        pytest.param(Reply(json={"status": 200, "RemoteConfiguration": {"hash": 7}}),
                     id="device-only-field"),
        pytest.param(
            Reply(json={"status": 200, "RemoteConfiguration": {"transmissionInterval": 5}}),
            id="out-of-range",
        ),
    ],
)  # fmt: skip
async def test_answers_that_ask_for_nothing_deliver_the_frame_and_queue_nothing(
    store: Store, twx: ThingWorxServer, reply: Reply, caplog: pytest.LogCaptureFixture
) -> None:
    twx.script(MEASUREMENT, reply)
    ids = await ingest(store, [("m", frame("m"))])
    async with running(store, settings(twx.url)):
        await cursor_is(store, ids[-1])
    assert [c.status for c in twx.calls] == [200]  # delivered once, never resent
    assert await queued_downlinks(store) == []
    assert await store.count_dead_letters(SINK) == 0
    refused = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    if "hash" in str(reply.json) or "transmissionInterval" in str(reply.json):
        assert refused and SEED_M in refused[0]


def test_remote_configuration_parsing() -> None:
    def parse(value: Any) -> dict[str, Any] | None:
        return remote_configuration(json.dumps(value).encode())

    assert parse({"status": 200, "RemoteConfiguration": {"apn": "\x7f", "flag": 1}}) == {
        "apn": "\x7f"
    }
    # A service with a JSON output answers an InfoTable; its result is unwrapped.
    inner = {"status": 200, "RemoteConfiguration": {"measurementPeriodBase": 30}}
    assert parse({"dataShape": {}, "rows": [{"result": inner}]}) == {"measurementPeriodBase": 30}
    assert parse({"rows": [{"result": json.dumps(inner)}]}) == {"measurementPeriodBase": 30}
    assert parse({"status": "200", "RemoteConfiguration": {"apn": "x"}}) is None
    assert parse({"status": 200, "RemoteConfiguration": ["apn"]}) is None
    assert parse([inner]) is None
    assert remote_configuration(b"\xff\xfe") is None
    assert remote_configuration(b"") is None


# --- end to end ---------------------------------------------------------------------------------


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def coap_post(port: int, endpoint: str, payload: bytes, workdir: Path) -> tuple[str, bytes]:
    """A CON POST with libcoap's coap-client; (its message log, the answer's payload)."""
    sent, answer = workdir / f"{endpoint}.bin", workdir / f"{endpoint}.answer"
    sent.write_bytes(payload)
    answer.unlink(missing_ok=True)
    process = await asyncio.create_subprocess_exec(
        COAP_CLIENT, "-v", "7", "-m", "post", "-f", str(sent), "-o", str(answer),
        f"coap://127.0.0.1:{port}/{endpoint}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), 15)
    return out.decode("latin-1"), answer.read_bytes() if answer.exists() else b""


def remote_applied(answer: bytes) -> bool:
    """Whether a 2.01's payload carries the RemoteConfiguration of the end-to-end test."""
    config = ProtoConfig.FromString(answer)
    return (config.measurement_period_base, config.transmission_interval) == (60, 900)


async def test_end_to_end_coap_client_to_thingworx_and_its_configuration_back_to_the_sensor(
    tmp_path: Path, twx: ThingWorxServer
) -> None:
    """coap-client posts the seed frames to a fieldbridge process; the fake ThingWorx gets every
    frame, answers the first measurement with a RemoteConfiguration, and the 2.01 to the
    sensor's next confirmable /m or /i carries that configuration, exactly once.

    Which one is a race the product need not win a particular way: the sink queues the
    downlink when ThingWorx answers the first /m, which may be before or after coap-client
    posts the /i; either way the first CON answer after the queue takes it."""
    remote = {"measurementPeriodBase": 60, "transmissionInterval": 900, "flag": True}
    twx.script(MEASUREMENT, Reply(json={"status": 200, "RemoteConfiguration": remote}))
    coap_port = free_udp_port()
    proc = FieldbridgeProcess(
        tmp_path / "fb",
        sources={"efento": [{"name": SOURCE, "listen": f"127.0.0.1:{coap_port}"}]},
        sinks={"thingworx": [{"name": SINK, "url": twx.url, "app_key": APP_KEY, "thing": THING}]},
    )
    await asyncio.to_thread(proc.start)
    try:
        answers: dict[str, bytes] = {}
        for endpoint in ("m", "i", "c"):
            log, answers[endpoint] = await coap_post(coap_port, endpoint, frame(endpoint), tmp_path)
            assert "2.01" in log, log
        await twx.wait_for(lambda: len(twx.received) == 3)
        assert [c.role for c in twx.received] == [MEASUREMENT, DEVICE_INFO, CONFIGURATION]
        m, i, c = twx.received
        assert json.loads(m.params["payload"]) == seed_minus_bugs(SEED["m"]["seed_output"])
        assert json.loads(i.params["deviceJson"])["serialNum"] == SEED_I
        assert c.params["configuration"] == json.loads(SEED["c"]["seed_output"])

        async def queued() -> bool:
            rows = proc.query("SELECT COUNT(*) FROM downlinks WHERE device = ?", (SEED_M,))
            return bool(rows[0][0])

        await eventually(queued, "a queued downlink")
        pending = json.loads((await asyncio.to_thread(
            proc.cli, "efento", "pending", SEED_M, "--json"
        )).stdout)  # fmt: skip
        assert len(pending) == 1 and pending[0]["origin"] == "thingworx", pending

        log, answers["m again"] = await coap_post(coap_port, "m", frame("m"), tmp_path)
        assert "2.01" in log, log
        carried = [endpoint for endpoint, answer in answers.items() if remote_applied(answer)]
        assert len(carried) == 1 and carried[0] in ("m", "i", "m again"), carried
        assert json.loads((await asyncio.to_thread(
            proc.cli, "efento", "pending", SEED_M, "--json"
        )).stdout)[0]["state"] == "sent"  # fmt: skip
        await twx.wait_for(lambda: len(twx.received) == 4)
        status = {s["name"]: s for s in await asyncio.to_thread(proc.sinks_status)}
        assert status[SINK]["dead_letters"] == 0, status
    finally:
        await asyncio.to_thread(proc.kill)


# --- settings -----------------------------------------------------------------------------------


def test_settings_defaults_and_refusals() -> None:
    s = settings("https://twx.example.com:8443")
    assert s.route.kinds == ["efento"]
    assert (s.measurement_service, s.configuration_service, s.device_info_service) == (
        "SendMeasurement",
        "CheckConfig",
        "SendInfoDevice",
    )
    dest = ThingWorxDestination(settings("https://twx.example.com/", thing="Efento {device}/x"))
    assert dest.service_url(SEED_M, "SendMeasurement") == (
        "https://twx.example.com/Thingworx/Things/Efento%20282C024156AF%2Fx/Services/SendMeasurement"
    )
    for bad, field, words in [
        ({"url": "https://twx.example.com/Thingworx"}, "url", "without /Thingworx"),
        ({"url": "https://twx.example.com/?appKey=x"}, "url", "no query"),
        ({"thing": "Efento_{serial}"}, "thing", "only {device}"),
        ({"thing": "Efento_{device"}, "thing", "not a valid name template"),
        ({"app_key": ""}, "app_key", "at least 1"),
        ({"timeout": 0}, "timeout", "greater than 0"),
    ]:
        with pytest.raises(ValidationError) as info:
            settings(bad.get("url", "https://twx.example.com"), **{
                k: v for k, v in bad.items() if k != "url"
            })  # fmt: skip
        errors = info.value.errors()
        assert errors[0]["loc"] == (field,), errors
        assert words in str(errors[0]["msg"]), errors


def test_the_docs_example_is_valid_settings(tmp_path: Path) -> None:
    page = (paths.DOCS / "integrations" / "thingworx.md").read_text()
    example = page.split("```toml\n", 1)[1].split("```", 1)[0]
    config = tmp_path / "fieldbridge.toml"
    config.write_text(example)
    loaded = load_settings(config)
    assert [(t, s.name) for t, s in loaded.source_settings] == [
        ("http", "http"),  # a file without [[sources.http]] takes HTTP ingest, as always
        ("efento", "efento"),
    ]
    ((kind, sink),) = loaded.sink_settings
    assert kind == "thingworx" and isinstance(sink, ThingWorxSettings)
    assert (sink.thing, sink.route.kinds) == ("EfentoGateway", ["efento"])


def test_config_show_masks_the_app_key(tmp_path: Path) -> None:
    config = tmp_path / "fieldbridge.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path / "fb.db"}"\n'
        "[[sinks.thingworx]]\n"
        'name = "twx"\nurl = "https://twx.example.com"\n'
        f'app_key = "{APP_KEY}"\nthing = "Efento_{{device}}"\n'
    )
    done = run_cli("config", "show", "--json", config=config)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)["sinks"]["thingworx"][0]
    assert shown["app_key"] == "**********"
    assert shown["thing"] == "Efento_{device}"
    assert shown["route"]["kinds"] == ["efento"]
    text = run_cli("config", "show", config=config)
    assert text.returncode == 0
    for output in (done.stdout, text.stdout, text.stderr):
        assert APP_KEY not in output


# --- the fake refuses what ThingWorx refuses ------------------------------------------------------

M_PATH = f"/Thingworx/Things/{THING}/Services/SendMeasurement"
C_PATH = f"/Thingworx/Things/{THING}/Services/CheckConfig"
I_PATH = f"/Thingworx/Things/{THING}/Services/SendInfoDevice"
GOOD = {"appKey": APP_KEY, "Content-Type": "application/json", "Accept": "application/json"}
PAYLOAD = json.dumps(seed_minus_bugs(SEED["m"]["seed_output"]))


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "client_fault"),
    [
        ("POST", M_PATH, {"APPKEY": APP_KEY}, {"payload": PAYLOAD}, 200, False),
        ("POST", M_PATH, {"appKey": "wrong"}, {"payload": PAYLOAD}, 401, False),
        ("POST", M_PATH, {"appKey": None}, {"payload": PAYLOAD}, 401, True),
        ("POST", M_PATH, {"Content-Type": "text/plain"}, {"payload": PAYLOAD}, 403, True),
        ("POST", M_PATH, {"Accept": "text/html"}, {"payload": PAYLOAD}, 406, True),
        ("GET", M_PATH, {}, None, 405, True),
        ("POST", "/Thingworx/Things/Other/Services/SendMeasurement", {}, {}, 404, True),
        ("POST", f"/Thingworx/Things/{THING}/Services/Nope", {}, {}, 404, True),
        ("POST", "/Thingworx/SendMeasurement", {}, {}, 404, True),
        ("POST", M_PATH, {}, {}, 404, True),
        ("POST", M_PATH, {}, {"payload": json.loads(PAYLOAD)}, 500, True),
        ("POST", M_PATH, {}, {"payload": "not json"}, 500, True),
        ("POST", M_PATH, {}, {"payload": PAYLOAD, "extra": 1}, 500, True),
        ("POST", M_PATH, {}, {"payload": PAYLOAD.replace("282C", "282c")}, 500, True),
        ("POST", I_PATH, {}, {"deviceJson": json.dumps({"serialNum": "KCwCQVav"})}, 500, True),
        ("POST", I_PATH, {}, {"deviceJson": json.dumps({"serialNum": SEED_I})}, 200, False),
        ("POST", C_PATH, {}, {"device": SEED_C, "configuration": "{}"}, 500, True),
        ("POST", C_PATH, {}, {"device": SEED_C.lower(), "configuration": {}}, 500, True),
        ("POST", C_PATH, {}, {"device": SEED_C, "configuration": {}}, 200, False),
    ],
)
async def test_the_fake_checks_what_thingworx_checks(
    method: str,
    path: str,
    headers: dict[str, str | None],
    body: Any,
    status: int,
    client_fault: bool,
) -> None:
    sent = {k: v for k, v in {**GOOD, **headers}.items() if v is not None}
    if "APPKEY" in headers:
        del sent["appKey"]  # the header name is case-insensitive
    async with ThingWorxServer(APP_KEY, {THING: Thing(SERVICES)}) as twx:
        async with httpx.AsyncClient(base_url=twx.url) as client:
            response = await client.request(
                method, path, headers=sent, content=b"" if body is None else json.dumps(body)
            )
        assert response.status_code == status, response.text
        assert bool(twx.violations) == client_fault, twx.violations
        assert len(twx.received) == (1 if status == 200 else 0)


async def test_the_fake_properties() -> None:
    things = {THING: Thing(SERVICES, properties={"lastSeen": 0})}
    async with ThingWorxServer(APP_KEY, things) as twx:
        async with httpx.AsyncClient(base_url=twx.url, headers=GOOD) as client:
            path = f"/Thingworx/Things/{THING}/Properties/lastSeen"
            assert (await client.put(path, json={"other": 1})).status_code == 404
            assert (await client.put(path, json={"lastSeen": 42})).status_code == 200
            got = await client.get(path)
            assert got.status_code == 200 and got.json() == {"rows": [{"lastSeen": 42}]}
            assert (await client.post(path, json={"lastSeen": 1})).status_code == 405
        assert len(twx.violations) == 2
