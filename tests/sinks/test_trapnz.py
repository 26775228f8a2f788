"""The Trap.NZ sink: trap events through the real ingest and sink engine to a fake Trap.NZ."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from fieldbridge.codecs.trapnet import TrapNetCodec
from fieldbridge.config import load_settings
from fieldbridge.ingest import Ingest
from fieldbridge.model import Accepted
from fieldbridge.sinks.engine import SinkRunner
from fieldbridge.sinks.trapnz import TrapNZDestination, TrapNZSettings, render_record
from fieldbridge.store import Store
from tests.conftest import eventually
from tests.fakes.trapnz import Credentials, TrapNZServer
from tests.support import paths
from tests.support.sinks import run_sink

CREDS = Credentials()
SINK = "trapnz"
CODEC = TrapNetCodec("AKLC", "VBat")
FIXTURES = paths.FIXTURES / "trapnet"


def settings(trapnz: TrapNZServer, **overrides: Any) -> TrapNZSettings:
    values: dict[str, Any] = {
        "name": SINK,
        "token_url": trapnz.token_url,
        "url": trapnz.record_url,
        "client_id": CREDS.client_id,
        "client_secret": CREDS.client_secret,
        "username": CREDS.username,
        "password": CREDS.password,
        "max_backoff": 0.3,
        "timeout": 2.0,
    }
    values.update(overrides)
    return TrapNZSettings(**values)


def event(node: str, event: str = "T", state: str = "O", **extra: Any) -> bytes:
    return json.dumps({"NodeID": node, "Event": event, "State": state, **extra}).encode()


async def ingest(store: Store, payloads: Sequence[tuple[str, bytes]]) -> list[int]:
    """Trap-network messages through the real ingest path (codec trapnet); journal ids."""
    ids: list[int] = []
    async with Ingest(store) as feed:
        for topic, payload in payloads:
            outcome = await feed.submit("aklc", payload, CODEC, {"topic": topic})
            assert isinstance(outcome, Accepted), outcome
            ids.extend(outcome.ids)
    return ids


async def flag(store: Store, *nodes: str, on: bool = True) -> None:
    for node in nodes:
        await store.add_device(node, kind="trapnet")
        await store.update_device(node, flags={"trapnz": on})


@contextlib.asynccontextmanager
async def running(store: Store, sink: TrapNZSettings) -> AsyncIterator[SinkRunner]:
    runner = SinkRunner(
        "trapnz", sink, TrapNZDestination(sink), store, backoff_base=0.05, idle_poll=0.1
    )
    async with run_sink(runner):
        yield runner


async def cursor_at(store: Store, value: int) -> None:
    async def check() -> bool:
        return (await store.sink_state(SINK)).cursor >= value

    await eventually(check, f"the cursor at {value}")


@pytest.fixture
async def trapnz() -> AsyncIterator[TrapNZServer]:
    async with TrapNZServer(expires_in=300) as server:
        yield server
    assert server.violations == [], "fieldbridge broke the Trap.NZ contract"


async def test_the_seed_fixtures_become_the_seed_records(
    store: Store, trapnz: TrapNZServer
) -> None:
    fixtures = json.loads((FIXTURES / "environmental.json").read_text())
    await flag(store, "Trap017", "Trap018")
    ids = await ingest(store, [(f["topic"], f["payload"].encode()) for f in fixtures])
    entries = await store.journal_by_ids(ids)
    async with running(store, settings(trapnz)):
        await trapnz.wait_for(lambda: len(trapnz.records) == 2)
        await cursor_at(store, ids[-1])
    first, second = trapnz.records
    assert first.body == {
        "dev_id": "Trap017",
        "metadata": {"time": datetime.fromisoformat(first.body["metadata"]["time"]).isoformat()},
        "payload_fields": {
            "type": "sensor_report",
            "field_event": [{"value": "Set"}],
            "field_status": [{"value": "Set"}],
            "field_network": [{"value": "Iwinet"}],
            "field_gateway": [{"value": "TTGWCX"}],
            "field_battery_voltage": [{"value": 3.71}],
            "field_timeout": [{"value": 7200}],
        },
    }
    # The time is when fieldbridge received the event, in UTC.
    assert first.time.timestamp() == pytest.approx(entries[0].received_at, abs=1e-5)
    assert first.time.utcoffset() is not None and first.time.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert (second.dev_id, second.event, second.fields["field_status"]) == (
        "Trap018",
        "Heartbeat",
        "Sprung",
    )
    assert "field_gateway" not in second.fields and "field_battery_voltage" not in second.fields
    assert await store.sink_skips(SINK) == {"bad_event": 1, "bad_state": 1}


async def test_only_flagged_nodes_are_uploaded_and_the_rest_counted_and_kept(
    store: Store, trapnz: TrapNZServer
) -> None:
    await flag(store, "Trap1")
    await flag(store, "Trap2", on=False)
    await store.add_device("Trap3", kind="trapnet")  # registered, never flagged
    topic = "EnvironmentalServices/traps"
    ids = await ingest(
        store,
        [
            (topic, event("Trap1", "T", "C", VBat=3.6)),
            (topic, event("Trap2")),
            (topic, event("Trap3")),
            (topic, event("Stranger")),  # not in the registry: the uploader ignored those
            (topic, event("Trap1", "Q", "O")),
            (topic, event("Trap1", "H", "open")),
            ("AKLC/Node/Trap1", b'{"VBat": 3.5}'),  # not a trap event: not this sink's
            (topic, event("Trap1", "H", "O")),
        ],
    )
    async with running(store, settings(trapnz)) as runner:
        await trapnz.wait_for(lambda: len(trapnz.records) == 2)
        await cursor_at(store, ids[-1])
        assert runner.state in ("idle", "running")
    assert [(r.dev_id, r.event) for r in trapnz.records] == [
        ("Trap1", "Sprung"),
        ("Trap1", "Heartbeat"),
    ]
    assert await store.sink_skips(SINK) == {
        "bad_event": 1,
        "bad_state": 1,
        "flag_off": 2,
        "unknown_device": 1,
    }
    # Kept in the store all the same.
    assert [e.id for e in await store.journal_by_ids(ids)] == ids
    assert await store.get_device("Stranger") is None


async def test_a_refused_record_is_dead_lettered_with_the_body_and_the_rest_go_on(
    store: Store, trapnz: TrapNZServer
) -> None:
    await flag(store, "Trap1", "Trap2")
    trapnz.refuse("Trap2", 422)
    topic = "EnvironmentalServices"
    ids = await ingest(
        store, [(topic, event("Trap1")), (topic, event("Trap2")), (topic, event("Trap1", "H"))]
    )
    async with running(store, settings(trapnz)):
        await trapnz.wait_for(lambda: len(trapnz.records) == 2)
        await cursor_at(store, ids[-1])
    letters = await store.list_dead_letters(sink=SINK)
    assert [(d.message_id, d.status) for d in letters] == [(ids[1], 422)]
    assert "no sensor Trap2" in letters[0].body
    assert trapnz.counts["refused:record"] == 1, "a 422 is not sent again"


async def test_5xx_backs_off_and_every_event_goes_once_in_order(
    store: Store, trapnz: TrapNZServer
) -> None:
    await flag(store, "Trap1", "Trap2")
    topic = "EnvironmentalServices"
    ids = await ingest(store, [(topic, event(f"Trap{1 + n % 2}", "H")) for n in range(6)])
    trapnz.fail(503, times=4)
    async with running(store, settings(trapnz)):
        await trapnz.wait_for(lambda: len(trapnz.records) == 6)
        await cursor_at(store, ids[-1])
    assert [r.dev_id for r in trapnz.records] == ["Trap1", "Trap2"] * 3
    times = [r.time for r in trapnz.records]
    assert times == sorted(times)


async def test_a_batch_read_again_after_a_pause_counts_its_skips_once(
    store: Store, trapnz: TrapNZServer
) -> None:
    await flag(store, "Trap1")
    await flag(store, "Trap2", on=False)
    topic = "EnvironmentalServices"
    ids = await ingest(store, [(topic, event("Trap2")), (topic, event("Trap1"))])
    trapnz.fail(503)
    async with running(store, settings(trapnz)) as runner:
        await eventually(lambda: runner.state == "backoff", "the sink backing off")
        await store.set_paused(SINK, True)  # abandons the batch; resuming reads it again
        await eventually(lambda: runner.state == "paused", "the sink paused")
        await store.set_paused(SINK, False)
        await eventually(lambda: runner.state == "backoff", "backing off again")
        trapnz.recover()
        await cursor_at(store, ids[-1])
    assert [r.dev_id for r in trapnz.records] == ["Trap1"]
    assert await store.sink_skips(SINK) == {"flag_off": 1}


async def test_a_failing_token_endpoint_shows_in_health_and_the_store(
    store: Store, trapnz: TrapNZServer
) -> None:
    await flag(store, "Trap1")
    ids = await ingest(store, [("EnvironmentalServices", event("Trap1"))])
    trapnz.fail_tokens(400)
    async with running(store, settings(trapnz)) as runner:

        async def noted() -> bool:
            health = await store.token_health(f"sink:{SINK}")
            return health is not None and health.failures >= 2

        await eventually(noted, "two token failures noted in the store")
        state = await store.sink_state(SINK)
        assert state.state in ("backoff", "failing")
        assert state.last_error is not None and "token endpoint" in state.last_error
        shown = runner.health()
        assert shown is not None and shown["auth"]["state"] == "failing"
        assert "HTTP 400" in shown["auth"]["last_error"]
        assert trapnz.records == []
        trapnz.recover()
        await trapnz.wait_for(lambda: len(trapnz.records) == 1)
        await cursor_at(store, ids[-1])
    health = await store.token_health(f"sink:{SINK}")
    assert health is not None and health.failures == 0


def test_render_refuses_what_is_not_a_valid_trap_event() -> None:
    [decoded] = CODEC(event("Trap1", "X"), {"topic": "EnvironmentalServices"}, 1_700_000_000.0)
    from fieldbridge.model import JournalEntry

    entry = JournalEntry(1, 1.0, "aklc", "Trap1", decoded.kind, {}, b"", decoded.readings)
    sink = TrapNZSettings(name="t", client_id="c", client_secret="s", username="u", password="p")
    with pytest.raises(ValueError, match="not valid"):
        render_record(entry, sink)


def test_settings_defaults_and_secrets(tmp_path: Any) -> None:
    path = tmp_path / "fb.toml"
    path.write_text(
        "[[sinks.trapnz]]\n"
        'name = "trapnz"\n'
        'client_id = "abc"\n'
        'client_secret = "very-secret-1"\n'
        'username = "ranger"\n'
        'password = "very-secret-2"\n'
    )
    loaded = load_settings(path)
    [(type_name, sink)] = loaded.sink_settings
    assert type_name == "trapnz" and isinstance(sink, TrapNZSettings)
    assert str(sink.token_url) == "https://io.trap.nz/api-sensor/oauth/token"
    assert str(sink.url) == "https://io.trap.nz/api-sensor/iot/sensor-record"
    assert (sink.network, sink.field_timeout, sink.route.flag) == ("Iwinet", 7200, "trapnz")
    routed = TrapNZSettings(
        name="t",
        client_id="c",
        client_secret="s",
        username="u",
        password="p",
        route={"sources": ["aklc"]},
    )
    assert (routed.route.sources, routed.route.flag) == (["aklc"], "trapnz"), "always flagged"
    shown = json.dumps(loaded.public_dict())
    assert "very-secret" not in shown
    with pytest.raises(ValidationError):
        TrapNZSettings(name="t", client_id="c", client_secret="s", username="u")  # type: ignore[call-arg]


async def test_the_fake_checks_what_trap_nz_checks() -> None:
    """The fake refuses what §1.4 says the real API refuses (so passing tests mean something)."""
    async with TrapNZServer(expires_in=300) as fake, httpx.AsyncClient(timeout=5) as client:
        form = {
            "grant_type": "password",
            "client_id": CREDS.client_id,
            "client_secret": CREDS.client_secret,
            "username": CREDS.username,
            "password": CREDS.password,
        }
        as_json = await client.post(fake.token_url, json=form)
        assert as_json.status_code == 400 and fake.violations.pop().endswith("not a form")
        wrong = await client.post(fake.token_url, data={**form, "client_secret": "x"})
        assert (wrong.status_code, wrong.json()["error"]) == (401, "invalid_client")
        bad_user = await client.post(fake.token_url, data={**form, "password": "x"})
        assert (bad_user.status_code, bad_user.json()["error"]) == (400, "invalid_grant")
        granted = (await client.post(fake.token_url, data=form)).json()
        assert list(granted) == ["token_type", "expires_in", "access_token", "refresh_token"]
        assert granted["token_type"] == "Bearer" and len(granted["access_token"]) > 1000
        refresh = {**form, "grant_type": "refresh_token", "refresh_token": granted["refresh_token"]}
        del refresh["username"], refresh["password"]
        rotated = await client.post(fake.token_url, data=refresh)
        assert rotated.status_code == 200
        assert rotated.json()["refresh_token"] != granted["refresh_token"]
        reused = await client.post(fake.token_url, data=refresh)
        assert reused.status_code == 400, "a refresh token works once (rotation)"

        token = rotated.json()["access_token"]
        hal = {"Content-Type": "application/hal+json", "Authorization": f"Bearer {token}"}

        async def record(body: Any, **headers: str) -> httpx.Response:
            return await client.post(
                fake.record_url, content=json.dumps(body), headers={**hal, **headers}
            )

        wrapped = {
            "dev_id": "Trap1",
            "metadata": {"time": [{"value": "2026-12-01T10:00:00Z"}]},
            "payload_fields": {
                "type": [{"target_id": "sensor_report"}],
                "field_event": [{"value": "Set"}],
            },
        }
        plain = {**wrapped, "metadata": {"time": "2026-12-01T10:00:00+12:00"}}
        plain["payload_fields"] = {**wrapped["payload_fields"], "type": "sensor_report"}
        assert (await record(wrapped)).status_code == 201
        assert (await record(plain)).status_code == 201
        assert len(fake.records) == 2 and fake.violations == []
        refusals = [
            ({**wrapped, "dev_id": ""}, "dev_id"),
            ({**wrapped, "metadata": {"time": "yesterday"}}, "ISO 8601"),
            ({**wrapped, "payload_fields": {"type": "x", "field_event": "Set"}}, "type"),
            ({**wrapped, "payload_fields": {"type": "sensor_report"}}, "field_event"),
        ]
        for body, why in refusals:
            answer = await record(body)
            assert answer.status_code == 422 and why in answer.json()["message"], why
        assert (await record(wrapped, **{"Content-Type": "application/json"})).status_code == 415
        assert (await record(wrapped, Authorization=token)).status_code == 401  # no "Bearer "
        assert len(fake.violations) == 6
        fake.violations.clear()
        assert (await record(wrapped, Authorization="Bearer nope")).status_code == 401
        fake.expire_tokens()
        assert (await record(wrapped)).status_code == 401 and fake.counts["expired"] == 1
        assert len(fake.records) == 2 and fake.violations == []
