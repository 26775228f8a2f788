"""The DUNE DB sink: readings through the real ingest and sink engine become actions on a fake DB,
one per message, never a second one on replay or restart."""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fieldbridge.clients import short_uuid
from fieldbridge.clients.dunedb import DuneEnvironment
from fieldbridge.codecs import http_json
from fieldbridge.config import DuneDBSettings, load_settings
from fieldbridge.errors import ConfigError
from fieldbridge.ingest import Ingest
from fieldbridge.model import Accepted, DuneActionState
from fieldbridge.sinks.dunedb import DuneDBDestination, DuneDBSinkSettings
from fieldbridge.sinks.engine import SinkRunner
from fieldbridge.store import Store
from tests.conftest import eventually
from tests.fakes.dunedb import PERMISSIONS, DuneDBServer
from tests.support.sinks import run_sink

SINK = "dune"
RIG = "rig-1"
COMPONENT = uuid.UUID("a44521d0-0fb8-4ade-8002-3385545c3318")


def settings(dune: DuneDBServer, **overrides: Any) -> DuneDBSinkSettings:
    values: dict[str, Any] = {
        "name": SINK,
        "environment": "test",
        "devices": {
            RIG: {
                "component": short_uuid.encode(COMPONENT),  # a short UUID: converted once
                "action_form": "wire_tension",
                "fields": {"tension": "tension", "temperature": "temp"},
                "data": {"operator": "fieldbridge"},
                "time_field": "measuredAt",
            }
        },
        "max_backoff": 0.3,
        "timeout": 1.0,
    }
    values.update(overrides)
    sink = DuneDBSinkSettings(**values)
    env = DuneEnvironment(
        auth0_domain=dune.url,
        db_domain=dune.url,
        client_id=dune.client_id,
        client_secret=dune.client_secret,
    )
    assert sink.resolve({"dunedb": DuneDBSettings(environments={"test": env})}) == []
    return sink


def reading_message(n: int, device: str = RIG, **readings: float) -> bytes:
    values = readings or {"tension": 5.0 + n / 100, "temp": 20.0 + n / 10}
    return json.dumps(
        {"device": device, "readings": values, "id": f"m{n}", "ts": 1_764_000_000 + n}
    ).encode()


async def ingest(store: Store, payloads: list[bytes]) -> list[int]:
    ids: list[int] = []
    async with Ingest(store) as feed:
        for payload in payloads:
            outcome = await feed.submit("http", payload, http_json.decode, {})
            assert isinstance(outcome, Accepted), outcome
            ids.extend(outcome.ids)
    return ids


@contextlib.asynccontextmanager
async def running(store: Store, sink: DuneDBSinkSettings) -> AsyncIterator[SinkRunner]:
    runner = SinkRunner(
        "dunedb", sink, DuneDBDestination(sink), store, backoff_base=0.05, idle_poll=0.1
    )
    async with run_sink(runner):
        yield runner


async def cursor_at(store: Store, value: int) -> None:
    async def check() -> bool:
        return (await store.sink_state(SINK)).cursor == value

    await eventually(check, f"the cursor at {value}")


@pytest.fixture
async def dune() -> AsyncIterator[DuneDBServer]:
    async with DuneDBServer() as server:
        server.add_component(COMPONENT, "tension_rig", name="Rig 1")
        yield server
    assert server.violations == [], "the sink broke the DUNE DB contract"


def posted_actions(dune: DuneDBServer) -> int:
    return sum(1 for r in dune.requests if r.method == "POST" and r.path == "/api/action")


async def test_each_message_becomes_one_action_carrying_its_readings(
    store: Store, dune: DuneDBServer
) -> None:
    ids = await ingest(
        store,
        [
            *(reading_message(n) for n in range(5)),
            reading_message(5, device="rig-2"),  # not configured: not this sink's
            reading_message(6, humidity=50.0),  # configured, none of the mapped readings
        ],
    )
    async with running(store, settings(dune)):
        await cursor_at(store, ids[-1])
    records = await store.list_dune_actions(SINK)
    assert [r.message_id for r in records] == ids[:5]
    assert all(r.state is DuneActionState.CREATED and r.attempts == 1 for r in records)
    assert {r.action_id for r in records} == set(dune.actions)
    first = records[0]
    assert first.component_uuid == str(COMPONENT) and first.form_id == "wire_tension"
    assert [(c["field"], c["value"]) for c in first.readings] == [
        ("tension", 5.0),
        ("temperature", 20.0),
    ]
    action = dune.action(first.action_id)  # type: ignore[arg-type]
    assert action is not None
    assert action["componentUuid"] == str(COMPONENT) and action["typeFormId"] == "wire_tension"
    assert action["data"] == {
        "operator": "fieldbridge",
        "tension": 5.0,
        "temperature": 20.0,
        "measuredAt": "2025-11-24T16:00:00Z",
        "submit": True,
    }
    assert await store.sink_skips(SINK) == {"no_mapped_readings": 1}
    assert dune.counts["granted"] == 1
    kept = await store.load_token(f"sink:{SINK}")
    assert kept is not None and kept.access_token == dune.tokens[0]


async def test_a_restart_mid_batch_and_a_replay_create_no_second_action(
    store: Store, dune: DuneDBServer
) -> None:
    ids = await ingest(store, [reading_message(n) for n in range(20)])
    sink = settings(dune)
    async with running(store, sink) as runner:
        await eventually(lambda: len(dune.actions) >= 8, "eight actions created")
        dune.fail(503, path="/api/action")
        await eventually(lambda: runner.state == "backoff", "the sink backing off")
    made = len(dune.actions)
    assert 8 <= made < 20
    assert (await store.sink_state(SINK)).cursor == 0, "stopped mid-batch: the cursor kept"

    dune.recover()
    async with running(store, sink) as runner:  # a new runner and destination: a restart
        await cursor_at(store, ids[-1])
        assert len(dune.actions) == 20
        posts = posted_actions(dune)
        await store.request_replay(SINK, 0)

        async def replayed() -> bool:
            state = await store.sink_state(SINK)
            return state.replay_from is None and state.cursor == ids[-1] and runner.state == "idle"

        await eventually(replayed, "the replay done")
        assert posted_actions(dune) == posts, "a replay posts nothing"
    records = await store.list_dune_actions(SINK)
    assert [r.message_id for r in records] == ids
    assert sorted(r.action_id for r in records) == sorted(dune.actions)  # type: ignore[type-var]
    assert all(len(versions) == 1 for versions in dune.actions.values()), "no action edited"
    carried = [r.readings[0]["value"] for r in records]
    assert carried == [5.0 + n / 100 for n in range(20)]
    assert {a[-1]["data"]["tension"] for a in dune.actions.values()} == set(carried)


async def test_a_lost_answer_is_posted_again_and_the_possible_duplicate_counted(
    store: Store, dune: DuneDBServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "fieldbridge.sinks")
    ids = await ingest(store, [reading_message(0)])
    dune.lose_answers(1, seconds=3.0)  # the DB makes it; the answer never comes (timeout 1 s)
    async with running(store, settings(dune)):
        await cursor_at(store, ids[-1])
    [record] = await store.list_dune_actions(SINK)
    assert record.state is DuneActionState.CREATED and record.attempts == 2
    assert len(dune.actions) == 2, "the window the docs name: one duplicate"
    assert "may have reached the DUNE DB without an answer" in caplog.text


async def test_refusals_dead_letter_or_wait_as_the_server_means(
    store: Store, dune: DuneDBServer
) -> None:
    other = uuid.uuid4()
    dune.add_component(other)
    devices = {
        RIG: {"component": str(COMPONENT), "action_form": "wire_tension"},
        "rig-bad": {"component": str(other), "action_form": "no_such_form"},
    }
    ids = await ingest(
        store,
        [reading_message(0), reading_message(1, device="rig-bad"), reading_message(2)],
    )
    async with running(store, settings(dune, devices=devices)):
        await cursor_at(store, ids[-1])
    [letter] = await store.list_dead_letters(sink=SINK)
    assert (letter.message_id, letter.status) == (ids[1], 500)
    assert letter.body == "Error: Action::save() - unknown action type form ID no_such_form"
    records = await store.list_dune_actions(SINK)
    assert [r.message_id for r in records] == [ids[0], ids[2]], "no record of a refused POST"
    data = dune.action(records[0].action_id)["data"]  # type: ignore[arg-type,index]
    assert data == {"tension": 5.0, "temp": 20.0, "submit": True}  # no mapping: by quantity


async def test_a_missing_permission_waits_then_a_new_token_delivers(store: Store) -> None:
    async with DuneDBServer(permissions=("components:view", "actions:view")) as dune:
        dune.add_component(COMPONENT)
        ids = await ingest(store, [reading_message(0)])
        async with running(store, settings(dune)) as runner:

            async def failing() -> bool:
                state = await store.sink_state(SINK)
                return state.state == "failing" and "actions:perform" in (state.last_error or "")

            await eventually(failing, "the sink failing on the missing permission")
            # A retry may be between its record of intent and the refusal that releases it.
            records = await store.list_dune_actions(SINK)
            assert all(r.state is DuneActionState.INTENDED for r in records)
            assert await store.list_dead_letters(sink=SINK) == []
            assert runner.state == "failing"
            dune.permissions = PERMISSIONS  # granted in Auth0: new tokens carry it
            await cursor_at(store, ids[-1])
        assert len(dune.actions) == 1 and dune.counts["granted"] >= 2
        [record] = await store.list_dune_actions(SINK)
        assert record.attempts == 1, "refused POSTs are not counted as possible duplicates"
        assert dune.violations == []


def test_the_environment_is_named_when_missing(tmp_path: Path) -> None:
    path = tmp_path / "fb.toml"
    path.write_text(
        "[[sinks.dunedb]]\n"
        'name = "dune"\n'
        'environment = "production"\n'
        "[sinks.dunedb.devices.rig-1]\n"
        'component = "mhvXdrZT4jP5T8vBxuvm75"\n'
        'action_form = "wire_tension"\n'
    )
    with pytest.raises(ConfigError) as bad:
        load_settings(path)
    assert "sinks.dunedb.dune: environment 'production' is not in [dunedb.environments]" in str(
        bad.value
    )
    path.write_text(
        path.read_text()
        + "[dunedb.environments.production]\n"
        + 'auth0_domain = "dune.eu.auth0.com"\ndb_domain = "db.dune.example"\n'
        + 'client_id = "id"\nclient_secret = "very-secret"\n'
    )
    [(_, sink)] = load_settings(path).sink_settings
    assert isinstance(sink, DuneDBSinkSettings)
    assert sink.connection().api_url() == "https://db.dune.example/api"
