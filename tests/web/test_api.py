"""The REST API on a running service: every route, with real logins and tokens, on the real
store, data arriving through the service's own ingest."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import psycopg
import pytest

from fieldbridge.model import DeadLetterState, DownlinkState, FieldType, MessageField, MessageType
from fieldbridge.store import Pending, Store
from fieldbridge.store.audit import AuditEntry
from fieldbridge.store.jsoncol import dump
from fieldbridge.timefmt import iso
from tests.conftest import TABLES, eventually
from tests.fakes.webhook import WebhookReceiver
from tests.support.api import Api, assert_error, running_api

SERIAL = "282C024156AF"


@pytest.fixture
def store_url_pg(pg_url: str) -> str:
    """The run's PostgreSQL database, emptied."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY")
    return pg_url


async def _devices(api: Api) -> None:
    await api.ingest(
        [
            {"device": "dev-a", "kind": "probe", "readings": {"temperature": 1.0}},
            {"device": "dev-b", "kind": "probe", "readings": {"temperature": 2.0}},
            {"device": "dev-c", "kind": "trap", "readings": {"battery": 3.9}},
            {"device": "Weta-7", "kind": "trap", "readings": {"battery": 4.0}},
        ]
    )


async def changes(store: Store) -> list[AuditEntry]:
    """The audit log's entries of changes made in the test: not logins, not the first run's."""
    return [
        e for e in await store.list_audit() if e.actor != "fieldbridge" and e.action != "user.login"
    ]


# --- devices --------------------------------------------------------------------------------


async def test_devices_are_listed_filtered_searched_and_paged(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        await _devices(api)
        reader = await api.token("read")
        everything = (await reader.get("/api/v1/devices")).json()
        assert [d["id"] for d in everything["items"]] == ["Weta-7", "dev-a", "dev-b", "dev-c"]
        assert everything["next_cursor"] is None
        first = everything["items"][1]
        assert first["kind"] == "probe" and first["source"] == "http"
        assert first["last_seen"].endswith("Z") and first["status"] == "current"

        traps = (await reader.get("/api/v1/devices", params={"kind": "trap"})).json()
        assert [d["id"] for d in traps["items"]] == ["Weta-7", "dev-c"]
        # q: id or name, any case; % and _ are taken literally
        found = (await reader.get("/api/v1/devices", params={"q": "WETA"})).json()
        assert [d["id"] for d in found["items"]] == ["Weta-7"]
        none = (await reader.get("/api/v1/devices", params={"q": "dev_%"})).json()
        assert none["items"] == []
        http = await reader.get("/api/v1/devices", params={"source": "http", "status": "down"})
        assert http.json()["items"] == []

        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            params: dict[str, str | int] = {"limit": 3}
            if cursor:
                params["cursor"] = cursor
            page = (await reader.get("/api/v1/devices", params=params)).json()
            seen += [d["id"] for d in page["items"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == ["Weta-7", "dev-a", "dev-b", "dev-c"] and pages == 2

        assert_error(
            await reader.get("/api/v1/devices", params={"cursor": "bm90IGEgY3Vyc29y"}),
            400,
            "invalid_cursor",
        )
        other = (await reader.get("/api/v1/deadletters", params={"limit": 1})).json()
        assert other["next_cursor"] is None


async def test_a_device_is_shown_and_changed_as_devices_set_does(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        await _devices(api)
        admin = await api.user("admin")
        shown = (await admin.get("/api/v1/devices/dev-a")).json()
        assert shown["flags"] == {} and shown["notify"] == [] and shown["transitions"] == []
        assert_error(await admin.get("/api/v1/devices/nope"), 404, "not_found")

        answer = await admin.patch(
            "/api/v1/devices/dev-a",
            json={
                "flags": {"upload_trapnz": True, "upload_influxdb": False},
                "attributes": {"site": "Tāwharanui", "depth": 2},
                "name": "Trap by the gate",
                "status": "maintenance",
                "notify": ["email:ranger@example.org"],
                "location": {"latitude": -36.37, "longitude": 174.83},
            },
        )
        assert answer.status_code == 200, answer.text
        changed = answer.json()
        assert changed["flags"] == {"upload_trapnz": True, "upload_influxdb": False}
        assert changed["status"] == "maintenance" and changed["name"] == "Trap by the gate"
        assert changed["notify"] == ["email:ranger@example.org"]
        assert changed["location"] == {
            "latitude": -36.37,
            "longitude": 174.83,
            "source": "override",
        }
        assert changed["transitions"][0]["to_status"] == "maintenance"
        stored = await api.fb.store.get_device("dev-a")
        assert stored is not None and stored.flags["upload_trapnz"] is True
        assert stored.attributes["site"] == "Tāwharanui"

        removed = await admin.patch(
            "/api/v1/devices/dev-a",
            json={"location": None, "no_notify": ["email:ranger@example.org"]},
        )
        assert removed.json()["location"] is None and removed.json()["notify"] == []
        found = (await admin.get("/api/v1/devices", params={"q": "by the"})).json()
        assert [d["id"] for d in found["items"]] == ["dev-a"]

        for body, code in [
            ({}, "invalid_change"),
            ({"status": "down"}, "invalid_request"),
            ({"notify": ["email:nobody"]}, "invalid_change"),
            ({"notify": ["pager:1"]}, "invalid_change"),
            ({"message_type": "no-such-type"}, "invalid_change"),
            ({"allowed_downtime_min": 0}, "invalid_request"),
            ({"location": {"latitude": 91, "longitude": 0}}, "invalid_request"),
            ({"colour": "red"}, "invalid_request"),
        ]:
            assert_error(await admin.patch("/api/v1/devices/dev-a", json=body), 422, code)
        assert_error(
            await admin.patch("/api/v1/devices/nope", json={"name": "x"}), 404, "not_found"
        )
        entries = await api.fb.store.list_audit(action="device.update")
        assert len(entries) == 2 and entries[0].target == "dev-a"
        assert entries[1].details["flags"] == {"upload_trapnz": True, "upload_influxdb": False}
        assert entries[0].actor.startswith("admin-")


# --- readings -------------------------------------------------------------------------------


async def test_readings_by_range_and_quantity_in_pages_and_as_csv(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        base = 1_780_000_000
        await api.ingest(
            [
                {"device": "dev-a", "ts": base + i, "readings": {"temperature": i, "humidity": 50}}
                for i in range(10)
            ]
        )
        reader = await api.token("read")
        page = await reader.get(
            "/api/v1/readings", params={"device": "dev-a", "quantity": "temperature", "limit": 4}
        )
        assert page.status_code == 200, page.text
        got: list[float] = [r["value"] for r in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        while cursor:
            more = (
                await reader.get(
                    "/api/v1/readings",
                    params={
                        "device": "dev-a",
                        "quantity": "temperature",
                        "limit": 4,
                        "cursor": cursor,
                    },
                )
            ).json()
            got += [r["value"] for r in more["items"]]
            cursor = more["next_cursor"]
        assert got == [float(i) for i in range(10)]

        window = await reader.get(
            "/api/v1/readings",
            params={
                "device": "dev-a",
                "since": iso(base + 2),
                "until": iso(base + 5),  # not included
            },
        )
        items = window.json()["items"]
        assert {r["measured_at"] for r in items} == {iso(base + 2), iso(base + 3), iso(base + 4)}
        assert len(items) == 6 and items[0]["device"] == "dev-a" and items[0]["message_id"] == 3

        exported = await reader.get(
            "/api/v1/readings", params={"device": "dev-a", "format": "csv", "quantity": "humidity"}
        )
        assert exported.status_code == 200
        assert exported.headers["content-type"].startswith("text/csv")
        assert "attachment" in exported.headers["content-disposition"]
        rows = list(csv.reader(io.StringIO(exported.text)))
        assert rows[0] == [
            "device",
            "measured_at",
            "quantity",
            "channel",
            "value",
            "unit",
            "message_id",
        ]
        assert len(rows) == 11 and rows[1][:3] == ["dev-a", iso(base), "humidity"]
        capped = await reader.get(
            "/api/v1/readings", params={"device": "dev-a", "format": "csv", "limit": 3}
        )
        assert len(capped.text.strip().splitlines()) == 4

        assert_error(
            await reader.get("/api/v1/readings", params={"device": "dev-a", "since": "yesterday"}),
            422,
            "invalid_request",
        )
        assert_error(await reader.get("/api/v1/readings"), 422, "invalid_request")
        assert_error(
            await reader.get("/api/v1/readings", params={"device": "dev-a", "limit": 5000}),
            422,
            "invalid_request",
        )


# --- sinks and dead letters -----------------------------------------------------------------


async def test_sinks_pause_resume_replay_and_dead_letters(tmp_path: Path) -> None:
    async with WebhookReceiver() as hook:
        sinks = {"webhook": [{"name": "hook", "url": hook.url, "max_backoff": 1.0}]}
        async with running_api(tmp_path, sinks=sinks) as api:
            hook.poison(2)
            await api.ingest([{"device": "d", "readings": {"t": i}} for i in range(3)])
            store = api.fb.store
            await eventually(lambda: store.list_dead_letters(sink="hook"), "a dead letter")
            await eventually(
                lambda: _cursor_at(api, 3), "the sink to deliver past the poisoned message"
            )
            writer = await api.token("write")
            listed = (await writer.get("/api/v1/sinks")).json()
            assert [(s["name"], s["type"]) for s in listed] == [("hook", "webhook")]
            assert listed[0]["dead_letters"] == 1 and listed[0]["cursor"] == 3

            paused = await writer.post("/api/v1/sinks/hook/pause")
            assert paused.json() == {"name": "hook", "paused": True}
            assert (await store.sink_state("hook")).paused
            assert (await writer.get("/api/v1/sinks")).json()[0]["state"] == "paused"
            resumed = await writer.post("/api/v1/sinks/hook/resume")
            assert resumed.json() == {"name": "hook", "paused": False}
            assert not (await store.sink_state("hook")).paused
            assert_error(await writer.post("/api/v1/sinks/nope/pause"), 404, "not_found")

            replay = await writer.post("/api/v1/sinks/hook/replay", json={"from_id": 1})
            assert replay.json() == {"name": "hook", "from_id": 1, "head_id": 3, "messages": 3}
            before = len(hook.received_ids)
            await hook.wait_for(lambda: len(hook.received_ids) > before)
            since = await writer.post(
                "/api/v1/sinks/hook/replay", json={"since": "2099-01-01T00:00:00Z"}
            )
            assert since.json()["messages"] == 0 and since.json()["from_id"] == 4
            for body in ({}, {"from_id": 1, "since": "2026-01-01T00:00:00Z"}, {"since": "x"}):
                assert_error(
                    await writer.post("/api/v1/sinks/hook/replay", json=body),
                    422,
                    "invalid_request",
                )

            dead = (await writer.get("/api/v1/deadletters", params={"sink": "hook"})).json()
            assert [(d["message_id"], d["status"], d["state"]) for d in dead["items"]] == [
                (2, 400, "dead")
            ]
            dead_id = dead["items"][0]["id"]
            retried = await writer.post(f"/api/v1/deadletters/{dead_id}/retry")
            assert retried.json() == {"id": dead_id, "state": "retry"}
            assert_error(await writer.post("/api/v1/deadletters/999/retry"), 404, "not_found")
            await store.mark_dead_letters(state=DeadLetterState.DEAD, ids=[dead_id])
            dropped = await writer.post(f"/api/v1/deadletters/{dead_id}/drop")
            assert dropped.json() == {"id": dead_id, "dropped": True}
            assert await store.list_dead_letters() == []
            assert_error(await writer.post(f"/api/v1/deadletters/{dead_id}/drop"), 404)
            actions = [e.action for e in await changes(store)]
            assert actions == [
                "deadletter.drop",
                "deadletter.retry",
                "sink.replay",
                "sink.replay",
                "sink.resume",
                "sink.pause",
            ]
            assert (await store.list_audit())[0].actor.startswith("token:")


async def _cursor_at(api: Api, cursor: int) -> bool:
    return (await api.fb.store.sink_state("hook")).cursor >= cursor


# --- quarantine -----------------------------------------------------------------------------


async def _quarantine_fixed_payload(api: Api) -> int:
    """A payload an older codec refused that today's decodes: quarantined as ingest does."""
    payload = b'{"device": "late-1", "kind": "probe", "readings": {"temperature": 7.5}}'
    [outcome] = await api.fb.store.commit(
        [
            Pending(
                "http",
                time.time(),
                dump({"path": "/api/v1/ingest"}),
                payload,
                reason="codec error: KeyError: 'kind'",
            )
        ]
    )
    return int(outcome.quarantine_id)  # type: ignore[union-attr]


async def test_quarantine_show_reingest_and_drop(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        bad = await api.fb.client.post(
            "/api/v1/ingest",
            content=b"\x00\xffnot json",
            headers={"content-type": "application/json"},
        )
        assert bad.status_code == 400
        fixed = await _quarantine_fixed_payload(api)
        writer = await api.token("write")
        listed = (await writer.get("/api/v1/quarantine")).json()
        assert [q["id"] for q in listed["items"]] == [fixed, fixed - 1]
        binary_id = fixed - 1
        shown = (await writer.get(f"/api/v1/quarantine/{binary_id}")).json()
        assert shown["payload_hex"] == b"\x00\xffnot json".hex()
        assert shown["payload_text"] is None and shown["size"] == 10 and shown["source"] == "http"
        text = (await writer.get(f"/api/v1/quarantine/{fixed}")).json()
        assert text["payload_text"].startswith('{"device": "late-1"')
        assert_error(await writer.get("/api/v1/quarantine/999"), 404, "not_found")
        paged = (await writer.get("/api/v1/quarantine", params={"limit": 1})).json()
        rest = (
            await writer.get(
                "/api/v1/quarantine", params={"limit": 1, "cursor": paged["next_cursor"]}
            )
        ).json()
        assert [q["id"] for q in paged["items"] + rest["items"]] == [fixed, binary_id]

        still = await writer.post(f"/api/v1/quarantine/{binary_id}/reingest")
        assert_error(still, 422, "still_refused")
        assert [q.id for q in await api.fb.store.list_quarantine()] == [fixed, binary_id]

        done = await writer.post(f"/api/v1/quarantine/{fixed}/reingest")
        assert done.status_code == 200, done.text
        body = done.json()
        assert body["quarantine_id"] == fixed and body["source"] == "http"
        [message_id] = body["message_ids"]
        [entry] = await api.fb.store.journal_by_ids([message_id])
        assert entry.device == "late-1" and entry.readings[0].value == 7.5
        assert await api.fb.store.get_quarantined(fixed) is None
        assert_error(await writer.post(f"/api/v1/quarantine/{fixed}/reingest"), 404, "not_found")

        dropped = await writer.post(f"/api/v1/quarantine/{binary_id}/drop")
        assert dropped.json() == {"id": binary_id, "dropped": True}
        assert await api.fb.store.list_quarantine() == []
        assert_error(await writer.post(f"/api/v1/quarantine/{binary_id}/drop"), 404)
        actions = [
            (e.action, e.target)
            for e in await api.fb.store.list_audit()
            if e.actor != "fieldbridge"
        ]
        assert actions == [("quarantine.drop", str(binary_id)), ("quarantine.reingest", str(fixed))]


# --- Efento downlinks, message types --------------------------------------------------------


async def test_efento_downlinks_are_queued_listed_and_cancelled(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        admin = await api.user("admin")
        queued = await admin.post(
            "/api/v1/efento/downlinks",
            json={
                "device": SERIAL.lower(),
                "settings": {"transmission_interval": 900},
                "requests": ["configuration"],
            },
        )
        assert queued.status_code == 201, queued.text
        first = queued.json()
        assert first["device"] == SERIAL and first["state"] == "queued" and first["origin"] == "api"
        assert first["fields"] == {"transmission_interval": 900, "configuration_request": True}
        [pending] = await api.fb.store.pending_downlinks(SERIAL)
        assert pending.id == first["id"] and pending.payload.hex() == first["payload_hex"]

        second = (
            await admin.post(
                "/api/v1/efento/downlinks", json={"device": SERIAL, "requests": ["device-info"]}
            )
        ).json()
        listed = (await admin.get("/api/v1/efento/downlinks", params={"limit": 1})).json()
        assert [d["id"] for d in listed["items"]] == [second["id"]]
        older = (
            await admin.get("/api/v1/efento/downlinks", params={"cursor": listed["next_cursor"]})
        ).json()
        assert [d["id"] for d in older["items"]] == [first["id"]]

        cancelled = await admin.post(f"/api/v1/efento/downlinks/{first['id']}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["state"] == "failed"
        assert cancelled.json()["failed_reason"].startswith("cancelled by admin-")
        assert [d.id for d in await api.fb.store.pending_downlinks(SERIAL)] == [second["id"]]
        assert_error(
            await admin.post(f"/api/v1/efento/downlinks/{first['id']}/cancel"), 409, "conflict"
        )
        assert_error(await admin.post("/api/v1/efento/downlinks/999/cancel"), 404, "not_found")
        states = (await admin.get("/api/v1/efento/downlinks", params={"state": "failed"})).json()
        assert [d["id"] for d in states["items"]] == [first["id"]]
        assert (await api.fb.store.get_downlink(first["id"])).state is DownlinkState.FAILED  # type: ignore[union-attr]

        for body in (
            {"device": "XYZ", "settings": {"transmission_interval": 900}},
            {"device": SERIAL},
            {"device": SERIAL, "settings": {"no_such_setting": 1}},
            {"device": SERIAL, "settings": {"transmission_interval": "often"}},
        ):
            answer = await admin.post("/api/v1/efento/downlinks", json=body)
            assert answer.status_code == 422, (body, answer.text)
            assert_error(answer, 422)
        actions = [e.action for e in await changes(api.fb.store)]
        assert actions == ["downlink.cancel", "downlink.queue", "downlink.queue"]


async def test_message_types_health_and_version(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        await api.fb.store.save_message_type(
            MessageType(
                "trap",
                (
                    MessageField("node", FieldType.TEXT, True),
                    None,
                    MessageField("v", FieldType.FLOAT),
                ),
                "a trap line",
            ),
            replace=False,
        )
        viewer = await api.user("viewer")
        types = (await viewer.get("/api/v1/messagetypes")).json()
        assert types == [
            {
                "name": "trap",
                "description": "a trap line",
                "fields": [
                    {"name": "node", "type": "S", "is_tag": True},
                    None,
                    {"name": "v", "type": "F", "is_tag": False},
                ],
            }
        ]
        health = await viewer.get("/api/v1/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert health.json()["store"] == "ok"
        version = (await viewer.get("/api/v1/version")).json()
        assert version["schema_revision"] == version["schema_head"]
        assert version["version"]


# --- users, tokens, audit -------------------------------------------------------------------


async def test_admins_manage_users_and_tokens_and_read_the_audit_log(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        admin = await api.user("admin")
        made = await admin.post(
            "/api/v1/users", json={"name": "vera", "role": "viewer", "password": "long enough!"}
        )
        assert made.status_code == 201, made.text
        assert made.json()["name"] == "vera" and made.json()["last_login"] is None
        assert_error(
            await admin.post(
                "/api/v1/users", json={"name": "vera", "role": "viewer", "password": "long enough!"}
            ),
            409,
            "conflict",
        )
        assert_error(
            await admin.post(
                "/api/v1/users", json={"name": "x", "role": "viewer", "password": "short"}
            ),
            422,
        )
        names = [u["name"] for u in (await admin.get("/api/v1/users")).json()]
        assert "vera" in names

        created = await admin.post("/api/v1/tokens", json={"name": "script", "scope": "read"})
        assert created.status_code == 201
        token = created.json()["token"]
        assert token.startswith("fb_")
        script = api.client({"Authorization": f"Bearer {token}"})
        async with script:
            assert (await script.get("/api/v1/devices")).status_code == 200
            listed = (await admin.get("/api/v1/tokens")).json()
            assert [t["name"] for t in listed] == ["script"] or "script" in [
                t["name"] for t in listed
            ]
            mine = next(t for t in listed if t["name"] == "script")
            assert mine["scope"] == "read" and mine["revoked_at"] is None
            assert mine["created_by"].startswith("admin-")
            revoked = await admin.post("/api/v1/tokens/script/revoke")
            assert revoked.json() == {"name": "script", "revoked": True}
            assert_error(await script.get("/api/v1/devices"), 401, "unauthenticated")
            assert_error(await admin.post("/api/v1/tokens/script/revoke"), 404, "not_found")
        assert_error(
            await admin.post("/api/v1/tokens", json={"name": "script", "scope": "write"}),
            409,
            "conflict",
        )

        audit = (await admin.get("/api/v1/audit", params={"limit": 2})).json()
        assert [e["action"] for e in audit["items"]] == ["token.revoke", "token.create"]
        assert audit["items"][0]["target"] == "script"
        older = (await admin.get("/api/v1/audit", params={"cursor": audit["next_cursor"]})).json()
        assert older["items"][0]["action"] == "user.create"
        assert older["items"][0]["target"] == "vera"
        by_action = (await admin.get("/api/v1/audit", params={"action": "user.create"})).json()
        assert by_action["items"][0]["details"] == {"role": "viewer"}

        writer = await api.token("write")
        viewer = await api.user("viewer")
        for client in (writer, viewer):
            for path in ("/api/v1/users", "/api/v1/tokens", "/api/v1/audit"):
                assert_error(await client.get(path), 403, "forbidden")


# --- who may change things ------------------------------------------------------------------


async def test_viewers_and_read_tokens_get_403_on_every_write(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        await _devices(api)
        schema = (await (await api.token("read")).get("/api/openapi.json")).json()
        writes = [
            (method.upper(), "/api" + path.replace("{", "").replace("}", ""))
            for path, item in schema["paths"].items()
            for method in item
            if method in ("post", "patch", "put", "delete")
        ]
        assert len(writes) == 13
        viewer = await api.user("viewer")
        reader = await api.token("read")
        for method, path in writes:
            concrete = path.replace("device_id", "dev-a").replace("name", "hook")
            concrete = concrete.replace("dead_id", "1").replace("quarantine_id", "1")
            concrete = concrete.replace("downlink_id", "1")
            for client in (viewer, reader):
                answer = await client.request(method, concrete, json={})
                assert_error(answer, 403, "forbidden")
        assert [e for e in await changes(api.fb.store)] == []
        nobody = api.nobody
        async with nobody:
            assert_error(await nobody.get("/api/v1/devices"), 401, "unauthenticated")


async def test_cookie_writes_need_the_csrf_token(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        await _devices(api)
        admin = await api.user("admin")
        csrf = admin.headers.pop("X-CSRF-Token")
        answer = await admin.patch("/api/v1/devices/dev-a", json={"name": "x"})
        assert_error(answer, 403, "csrf_failed")
        admin.headers["X-CSRF-Token"] = csrf
        assert (await admin.patch("/api/v1/devices/dev-a", json={"name": "x"})).status_code == 200


# --- errors, limits, docs -------------------------------------------------------------------


async def test_every_error_has_the_one_shape(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        writer = await api.token("write")
        assert_error(await writer.get("/api/v1/nothing-here"), 404, "not_found")
        assert_error(await writer.delete("/api/v1/devices"), 405, "method_not_allowed")
        invalid = assert_error(
            await writer.get("/api/v1/devices", params={"limit": 0}), 422, "invalid_request"
        )
        assert invalid["details"]["errors"][0]["loc"] == ["query", "limit"]
        assert invalid["message"].startswith("query.limit:")
        assert_error(
            await writer.post(
                "/api/v1/efento/downlinks",
                content=b"{not json",
                headers={"content-type": "application/json"},
            ),
            422,
            "invalid_request",
        )
        huge = {"device": SERIAL, "settings": {f"k{i}": "x" * 100 for i in range(1000)}}
        assert_error(
            await writer.post("/api/v1/efento/downlinks", json=huge), 413, "body_too_large"
        )

        async def chunks():  # type: ignore[no-untyped-def]
            for _ in range(100):
                yield b" " * 1024

        assert_error(
            await writer.post(
                "/api/v1/efento/downlinks",
                content=chunks(),
                headers={"content-type": "application/json"},
            ),
            413,
            "body_too_large",
        )
        assert await api.fb.store.list_downlinks() == []


async def test_openapi_document_and_docs_page_served_without_a_cdn(tmp_path: Path) -> None:
    async with running_api(tmp_path) as api:
        viewer = await api.user("viewer")
        schema = (await viewer.get("/api/openapi.json")).json()
        assert schema["servers"] == [{"url": "/api"}]
        assert {
            "/v1/devices",
            "/v1/readings",
            "/v1/audit",
            "/v1/quarantine/{quarantine_id}",
        } <= set(schema["paths"])
        page = await viewer.get("/api/docs")
        assert page.status_code == 200
        assert "/api/static/swagger-ui/swagger-ui-bundle.js" in page.text
        assert "https://" not in page.text and "http://" not in page.text
        script = await viewer.get("/api/static/swagger-ui/swagger-ui-bundle.js")
        assert script.status_code == 200 and len(script.content) > 100_000
        assert (await viewer.get("/api/static/swagger-ui/swagger-ui.css")).status_code == 200
        nobody = api.nobody
        async with nobody:
            assert_error(await nobody.get("/api/openapi.json"), 401)


# --- both backends --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_paging_reingest_and_changes_on_both_backends(
    tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    if backend == "postgresql":
        store_url = request.getfixturevalue("store_url_pg")
    async with running_api(tmp_path, store_url=store_url) as api:
        await _devices(api)
        writer = await api.token("write")
        page = (await writer.get("/api/v1/devices", params={"limit": 2, "q": "DEV"})).json()
        more = (
            await writer.get(
                "/api/v1/devices", params={"limit": 2, "q": "DEV", "cursor": page["next_cursor"]}
            )
        ).json()
        assert [d["id"] for d in page["items"] + more["items"]] == ["dev-a", "dev-b", "dev-c"]
        assert more["next_cursor"] is None
        changed = await writer.patch(
            "/api/v1/devices/dev-b", json={"flags": {"upload_dunedb": True}}
        )
        assert changed.json()["flags"] == {"upload_dunedb": True}
        fixed = await _quarantine_fixed_payload(api)
        done = (await writer.post(f"/api/v1/quarantine/{fixed}/reingest")).json()
        assert len(done["message_ids"]) == 1
        readings = (await writer.get("/api/v1/readings", params={"device": "late-1"})).json()
        assert [r["value"] for r in readings["items"]] == [7.5]
