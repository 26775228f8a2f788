"""The HTTP API of a real in-process Service: ingest answers, limits, auth, health and metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.routing import Route

from fieldbridge.app import Service
from fieldbridge.config import load_settings
from fieldbridge.ingest import Ingest
from fieldbridge.sources.http import HttpSource, HttpSourceSettings
from fieldbridge.store import Store
from tests.fakes.webhook import WebhookReceiver
from tests.support.locks import sqlite_write_locked
from tests.support.processes import to_toml
from tests.support.release import package_version, schema_head
from tests.support.web import store_token

INGEST = "/api/v1/ingest"
START_TIMEOUT = 20.0  # seconds for migrate + bind; only guards against a hang


@dataclass
class Running:
    """A started Service with an HTTP client pointed at it."""

    service: Service
    client: httpx.AsyncClient
    db_path: Path

    @property
    def store(self) -> Store:
        return self.service.store

    async def post(self, body: object, **kwargs: Any) -> httpx.Response:
        return await self.client.post(INGEST, json=body, **kwargs)

    async def metrics(self) -> str:
        response = await self.client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        return response.text


@asynccontextmanager
async def serve(
    tmp_path: Path,
    *,
    store: Mapping[str, Any] | None = None,
    http: Mapping[str, Any] | None = None,
    sources: Mapping[str, Any] | None = None,
    sinks: Mapping[str, Any] | None = None,
    scheme: str = "http",
) -> AsyncIterator[Running]:
    """Run fieldbridge's Service on a fresh SQLite file and a free port until the block ends."""
    db_path = tmp_path / "fieldbridge.db"
    config: dict[str, Any] = {
        "store": {"url": f"sqlite:///{db_path}", **(store or {})},
        "http": {"listen": "127.0.0.1:0", **(http or {})},
        "ingest": {"flush_ms": 1.0},
    }
    if sources:
        config["sources"] = sources
    if sinks:
        config["sinks"] = sinks
    path = tmp_path / "fieldbridge.toml"
    path.write_text(to_toml(config))
    service = Service(load_settings(path))
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(service.run(stop, ready))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({task, waiter}, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        await task  # raises what stopped it
    assert ready.is_set(), "the service did not start in time"
    assert service.http_port
    base = f"{scheme}://127.0.0.1:{service.http_port}"
    # The spy and the API need a credential; the ingest endpoint ignores this one.
    headers = {"Authorization": f"Bearer {await store_token(service.store, 'read')}"}
    try:
        async with httpx.AsyncClient(
            base_url=base, timeout=10.0, headers=headers, verify=False
        ) as client:
            yield Running(service, client, db_path)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15.0)


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one Prometheus sample, or None when it is not exposed."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


# --- POST /api/v1/ingest: accepted ----------------------------------------------------------


async def test_single_object_is_stored_before_the_answer(tmp_path: Path) -> None:
    async with serve(tmp_path) as fb:
        response = await fb.post(
            {"device": "dev-1", "kind": "probe", "readings": {"temperature": 21.5}}
        )
        assert response.status_code == 200
        assert response.json() == {"ids": [1], "duplicates": 0}
        # The answer came after commit: the store has it now, no waiting.
        entries = await fb.store.read_journal(0, 10)
        assert [(e.id, e.device, e.kind, e.source) for e in entries] == [
            (1, "dev-1", "probe", "http")
        ]
        readings = await fb.store.list_readings("dev-1")
        assert [(r.reading.quantity, r.reading.value) for r in readings] == [("temperature", 21.5)]
        device = await fb.store.get_device("dev-1")
        assert device is not None
        assert (device.kind, device.source, device.message_count) == ("probe", "http", 1)


async def test_array_gets_one_id_per_object(tmp_path: Path) -> None:
    async with serve(tmp_path) as fb:
        body = [
            {"device": "dev-a", "readings": {"temperature": 1.0}},
            {"device": "dev-b", "readings": {"humidity": 55, "temperature": {"value": 3.5}}},
            {"device": "dev-a", "readings": {"temperature": 2.0}},
        ]
        response = await fb.post(body)
        assert response.status_code == 200
        assert response.json() == {"ids": [1, 2, 3], "duplicates": 0}
        entries = await fb.store.read_journal(0, 10)
        assert [e.device for e in entries] == ["dev-a", "dev-b", "dev-a"]
        assert [r.reading.value for r in await fb.store.list_readings("dev-a")] == [1.0, 2.0]
        assert {r.reading.quantity for r in await fb.store.list_readings("dev-b")} == {
            "humidity",
            "temperature",
        }


async def test_same_id_again_is_a_duplicate(tmp_path: Path) -> None:
    async with serve(tmp_path) as fb:
        message = {"device": "dev-1", "id": "msg-7", "readings": {"temperature": 20.0}}
        first = await fb.post(message)
        assert first.json() == {"ids": [1], "duplicates": 0}
        again = await fb.post(message)
        assert again.status_code == 200
        assert again.json() == {"ids": [1], "duplicates": 1}
        other = await fb.post({**message, "id": "msg-8"})
        assert other.json() == {"ids": [2], "duplicates": 0}
        assert await fb.store.head_id() == 2
        assert len(await fb.store.list_readings("dev-1")) == 2
        device = await fb.store.get_device("dev-1")
        assert device is not None and device.message_count == 2


async def test_ts_iso_and_epoch(tmp_path: Path) -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
    async with serve(tmp_path) as fb:
        iso_z = await fb.post({"device": "d", "ts": "2026-01-02T03:04:05Z", "readings": {"a": 1}})
        offset = await fb.post(
            {"device": "d", "ts": "2026-01-02T05:04:05+02:00", "readings": {"b": 2}}
        )
        epoch = await fb.post({"device": "d", "ts": moment + 60, "readings": {"c": 3}})
        fraction = await fb.post({"device": "d", "ts": moment + 120.25, "readings": {"d": 4}})
        for response in (iso_z, offset, epoch, fraction):
            assert response.status_code == 200, response.text
        measured = {
            r.reading.quantity: r.reading.measured_at for r in await fb.store.list_readings("d")
        }
        assert measured == {"a": moment, "b": moment, "c": moment + 60, "d": moment + 120.25}


# --- POST /api/v1/ingest: refused -----------------------------------------------------------


async def test_bad_json_is_400_and_quarantined(tmp_path: Path) -> None:
    async with serve(tmp_path) as fb:
        body = b'{"device": "dev-1", "readings": {"temperature": 21.5'
        response = await fb.client.post(
            INGEST, content=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400
        answer = response.json()
        assert "JSON" in answer["error"]
        assert isinstance(answer["quarantine_id"], int)
        held = await fb.store.list_quarantine()
        assert [(q.id, q.payload, q.source) for q in held] == [
            (answer["quarantine_id"], body, "http")
        ]
        assert "JSON" in held[0].reason
        assert await fb.store.head_id() == 0


@pytest.mark.parametrize(
    ("body", "names"),
    [
        pytest.param([1, 2], "[0]", id="array-of-numbers"),
        pytest.param("just text", "object", id="a-string"),
        pytest.param([], "empty", id="empty-array"),
        pytest.param({"readings": {"t": 1}}, "device", id="no-device"),
        pytest.param({"device": "d"}, "readings", id="no-readings"),
        pytest.param(
            {"device": "d", "readings": {"t": 1}, "colour": "red"}, "colour", id="unknown-field"
        ),
        pytest.param(
            {"device": "d", "readings": {"temperature": "warm"}},
            "readings.temperature",
            id="string-value",
        ),
        pytest.param(
            {"device": "d", "readings": {"t": {"value": 1, "scale": 2}}},
            "readings.t.scale",
            id="unknown-reading-field",
        ),
        pytest.param({"device": "d", "ts": "yesterday", "readings": {"t": 1}}, "ts", id="bad-ts"),
        pytest.param(
            [{"device": "ok", "readings": {"t": 1}}, {"device": "d", "readings": {"t": "x"}}],
            "[1].readings.t",
            id="second-of-array",
        ),
    ],
)
async def test_wrong_shape_is_422_naming_the_field(
    tmp_path: Path, body: object, names: str
) -> None:
    async with serve(tmp_path) as fb:
        response = await fb.post(body)
        assert response.status_code == 422
        answer = response.json()
        assert names in answer["error"]
        held = await fb.store.list_quarantine()
        assert [q.id for q in held] == [answer["quarantine_id"]]
        assert held[0].reason == answer["error"]
        assert json.loads(held[0].payload) == body
        # Nothing of a refused payload is stored, not even its valid part.
        assert await fb.store.head_id() == 0
        assert await fb.store.list_devices() == []


async def test_a_device_id_with_an_ansi_escape_is_422_quarantined_and_counted(
    tmp_path: Path,
) -> None:
    async with serve(tmp_path) as fb:
        body = {"device": "dev\u001b[31m", "readings": {"t": 1}}
        response = await fb.post(body)
        assert response.status_code == 422
        answer = response.json()
        assert answer["error"].startswith(
            "device 'dev\\x1b[31m' contains the control character U+001B at position 3"
        )
        held = await fb.store.list_quarantine()
        assert [(q.id, q.reason) for q in held] == [(answer["quarantine_id"], answer["error"])]
        assert "\x1b" not in held[0].reason and json.loads(held[0].payload) == body
        assert await fb.store.list_devices() == []
        text = await fb.metrics()
        assert (
            sample(
                text, "fieldbridge_rejected_payloads_total", source="http", cause="bad_device_id"
            )
            == 1
        )


async def test_duplicate_keys_are_422_and_bad_utf8_is_400_naming_the_offset(
    tmp_path: Path,
) -> None:
    headers = {"Content-Type": "application/json"}
    async with serve(tmp_path) as fb:
        twice = b'{"device": "a", "readings": {"t": 1}, "device": "b"}'
        response = await fb.client.post(INGEST, content=twice, headers=headers)
        assert response.status_code == 422
        assert response.json()["error"].startswith("body: key 'device' appears twice")
        bad = b'{"device": "\xffa", "readings": {"t": 1}}'
        response = await fb.client.post(INGEST, content=bad, headers=headers)
        assert response.status_code == 400
        assert response.json()["error"] == "body is not UTF-8: invalid byte 0xff at offset 12"
        assert [q.payload for q in await fb.store.list_quarantine()] == [bad, twice]
        assert await fb.store.head_id() == 0


async def test_wrong_content_type_is_415(tmp_path: Path) -> None:
    async with serve(tmp_path) as fb:
        body = b'{"device": "d", "readings": {"t": 1}}'
        for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = {"Content-Type": content_type} if content_type else {}
            response = await fb.client.post(INGEST, content=body, headers=headers)
            assert response.status_code == 415, content_type
            assert "Content-Type" in response.json()["error"]
        # +json types and parameters are fine.
        ok = await fb.client.post(
            INGEST, content=body, headers={"Content-Type": "application/vnd.x+json; charset=utf-8"}
        )
        assert ok.status_code == 200
        assert await fb.store.head_id() == 1
        assert await fb.store.list_quarantine() == []


async def test_oversized_body_is_413(tmp_path: Path) -> None:
    limit = 1000
    async with serve(tmp_path, http={"max_body_bytes": limit}) as fb:
        padded = b'{"device": "d", "readings": {"t": 1}}'
        exact = padded + b" " * (limit - len(padded))
        assert len(exact) == limit
        at_limit = await fb.client.post(
            INGEST, content=exact, headers={"Content-Type": "application/json"}
        )
        assert at_limit.status_code == 200, at_limit.text

        over = await fb.client.post(
            INGEST, content=exact + b" ", headers={"Content-Type": "application/json"}
        )
        assert over.status_code == 413
        assert "max_body_bytes" in over.json()["error"]

        async def chunks() -> AsyncIterator[bytes]:
            # No Content-Length: the limit must hold while reading the stream.
            yield padded
            for _ in range(3):
                yield b" " * 400

        streamed = await fb.client.post(
            INGEST, content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert streamed.request.headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in streamed.request.headers
        assert streamed.status_code == 413
        assert "max_body_bytes" in streamed.json()["error"]

        assert await fb.store.head_id() == 1
        assert await fb.store.list_quarantine() == []


async def test_chunked_body_within_limit_is_accepted(tmp_path: Path) -> None:
    async with serve(tmp_path, http={"max_body_bytes": 1000}) as fb:

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"device": "streamed", '
            yield b'"readings": {"t": 7}}'

        response = await fb.client.post(
            INGEST, content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 200
        assert response.json() == {"ids": [1], "duplicates": 0}
        assert [r.reading.value for r in await fb.store.list_readings("streamed")] == [7.0]


async def test_bearer_tokens(tmp_path: Path) -> None:
    async with serve(tmp_path, http={"tokens": ["right-token", "second"]}) as fb:
        body = {"device": "d", "readings": {"t": 1}}
        missing = await fb.post(body)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        assert "token" in missing.json()["error"]
        wrong = await fb.post(body, headers={"Authorization": "Bearer wrong-token"})
        assert wrong.status_code == 401
        basic = await fb.post(body, headers={"Authorization": "Basic cmlnaHQtdG9rZW4="})
        assert basic.status_code == 401
        assert await fb.store.head_id() == 0
        assert await fb.store.list_quarantine() == []  # refused at the door, not quarantined

        right = await fb.post(body, headers={"Authorization": "Bearer right-token"})
        assert right.status_code == 200
        assert right.json() == {"ids": [1], "duplicates": 0}
        other = await fb.post(body, headers={"Authorization": "bearer second"})
        assert other.status_code == 200
        # Health and metrics stay open: tokens guard ingest only.
        assert (await fb.client.get("/healthz")).status_code == 200


async def test_store_failure_is_503_then_recovers(tmp_path: Path) -> None:
    async with serve(tmp_path, store={"busy_timeout_ms": 200}) as fb:
        first = await fb.post({"device": "d", "id": "a", "readings": {"t": 1}})
        assert first.json() == {"ids": [1], "duplicates": 0}

        # Another program (a backup, a hand-run sqlite3) holds the write lock.
        with sqlite_write_locked(fb.db_path):
            message = {"device": "d", "id": "b", "readings": {"t": 2}}
            refused = await fb.post(message)
            assert refused.status_code == 503
            assert refused.headers["retry-after"].isdigit()
            assert "retry" in refused.json()["error"]
            # Nothing of it was written (readers still work under WAL).
            assert await fb.store.head_id() == 1
            assert [r.reading.value for r in await fb.store.list_readings("d")] == [1.0]
            text = await fb.metrics()
            assert sample(text, "fieldbridge_ingest_payloads_total", outcome="store_error") == 1

        retried = await fb.post(message)
        assert retried.status_code == 200
        assert retried.json() == {"ids": [2], "duplicates": 0}
        assert [r.reading.value for r in await fb.store.list_readings("d")] == [1.0, 2.0]
        assert await fb.store.list_quarantine() == []


async def test_http_sources_each_on_their_own_path(tmp_path: Path) -> None:
    """[[sources.http]] entries: each its own path, name and limit, all behind http.tokens."""
    partners = {"name": "partners", "path": "/api/v1/partners", "max_body_bytes": 100}
    async with serve(
        tmp_path, http={"tokens": ["t0k"]}, sources={"http": [partners, {"name": "farm"}]}
    ) as fb:
        auth = {"Authorization": "Bearer t0k"}
        body = {"device": "d", "readings": {"t": 1}}
        assert (await fb.client.post("/api/v1/partners", json=body)).status_code == 401
        assert (await fb.post(body)).status_code == 401
        taken = await fb.client.post("/api/v1/partners", json=body, headers=auth)
        assert taken.json() == {"ids": [1], "duplicates": 0}
        assert (await fb.post(body, headers=auth)).json() == {"ids": [2], "duplicates": 0}
        big = {"device": "d", "readings": {"t": 1}, "kind": "x" * 100}
        over = await fb.client.post("/api/v1/partners", json=big, headers=auth)
        assert over.status_code == 413
        assert over.json()["error"] == (
            "body larger than 100 bytes (max_body_bytes of HTTP source 'partners')"
        )
        assert (await fb.post(big, headers=auth)).status_code == 200  # farm's limit is 1 MiB
        entries = await fb.store.read_journal(0, 10)
        assert [(e.source, e.meta["path"]) for e in entries] == [
            ("partners", "/api/v1/partners"),
            ("farm", "/api/v1/ingest"),
            ("farm", "/api/v1/ingest"),
        ]


async def test_source_answers_only_while_entered(store: Store) -> None:
    """Outside its `async with` the source takes nothing (503, retry), as every source."""
    async with Ingest(store, flush_ms=1.0) as ingest:
        source = HttpSource(HttpSourceSettings(name="http"), ingest)
        (route,) = source.http_routes
        app = Starlette(routes=[Route(route.path, route.endpoint, methods=list(route.methods))])
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://fb") as client:
            body = {"device": "d", "readings": {"t": 1}}
            early = await client.post(INGEST, json=body)
            assert early.status_code == 503
            assert early.headers["retry-after"] == "1"
            async with source:
                assert (await client.post(INGEST, json=body)).json() == {
                    "ids": [1],
                    "duplicates": 0,
                }
            late = await client.post(INGEST, json=body)
            assert late.status_code == 503
            assert "starting or stopping" in late.json()["error"]
    assert await store.head_id() == 1


# --- other routes ---------------------------------------------------------------------------


async def test_healthz(tmp_path: Path) -> None:
    async with serve(tmp_path) as fb:
        response = await fb.client.get("/healthz")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/json")
        assert response.json() == {
            "status": "ok",
            "version": package_version(),
            "store": "ok",
            "schema": {"revision": schema_head(), "head": schema_head()},
            "last_commit": {"ok": None, "at": None, "error": None},
            "sinks": {},
        }


async def test_healthz_is_degraded_while_commits_fail_and_ok_after_the_next_good_one(
    tmp_path: Path,
) -> None:
    async with serve(tmp_path, store={"busy_timeout_ms": 200}) as fb:
        assert (await fb.post({"device": "d", "id": "a", "readings": {"t": 1}})).status_code == 200
        healthy = await fb.client.get("/healthz")
        assert healthy.status_code == 200
        assert healthy.json()["last_commit"]["ok"] is True

        # Another program holds the write lock: reads work (WAL), every commit fails.
        with sqlite_write_locked(fb.db_path):
            refused = await fb.post({"device": "d", "id": "b", "readings": {"t": 2}})
            assert refused.status_code == 503
            sick = await fb.client.get("/healthz")
            assert sick.status_code == 503
            body = sick.json()
            assert (body["status"], body["store"]) == ("degraded", "ok")
            commit = body["last_commit"]
            assert commit["ok"] is False and "locked" in commit["error"]
            assert datetime.fromisoformat(commit["at"]) <= datetime.now(UTC)

        # Degraded until the next good commit, not until the lock is gone.
        assert (await fb.client.get("/healthz")).status_code == 503
        assert (await fb.post({"device": "d", "id": "b", "readings": {"t": 2}})).status_code == 200
        again = await fb.client.get("/healthz")
        assert again.status_code == 200
        assert again.json()["status"] == "ok"
        assert again.json()["last_commit"]["ok"] is True
        assert again.json()["last_commit"]["error"] is None


async def test_the_start_up_log_hides_the_secrets_of_the_store_url(
    tmp_path: Path, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # PostgreSQL here trusts local connections, so the passwords are carried and ignored.
    url = pg_url.replace("://postgres@", "://postgres:pw-secret@", 1)
    url += "?password=q-secret&sslpassword=ssl-secret&application_name=fieldbridge-test"
    with caplog.at_level(logging.INFO, logger="fieldbridge"):
        async with serve(tmp_path, store={"url": url}) as fb:
            assert (await fb.client.get("/healthz")).status_code == 200
    started = [r.getMessage() for r in caplog.records if "serving on" in r.getMessage()]
    assert len(started) == 1
    assert "postgres:**********@" in started[0] and "sslpassword=**********" in started[0]
    for secret in ("pw-secret", "q-secret", "ssl-secret"):
        assert secret not in caplog.text


async def test_healthz_reports_the_revision_the_store_is_at(tmp_path: Path) -> None:
    async with serve(tmp_path) as fb:
        # Another process (an older or newer fieldbridge) moved the schema's revision mark;
        # off the event loop, so a transaction the service has open can finish meanwhile.
        def move_mark() -> None:
            with sqlite3.connect(fb.db_path, timeout=20.0) as conn:
                conn.execute("UPDATE alembic_version SET version_num = 'elsewhere'")
            conn.close()

        await asyncio.to_thread(move_mark)
        schema = (await fb.client.get("/healthz")).json()["schema"]
        assert schema == {"revision": "elsewhere", "head": schema_head()}


async def test_wrong_method_and_unknown_path(tmp_path: Path) -> None:
    async with serve(tmp_path) as fb:
        assert (await fb.client.get(INGEST)).status_code == 405
        assert (await fb.client.put(INGEST, json={})).status_code == 405
        assert (await fb.client.get("/nowhere")).status_code == 404
        assert (await fb.client.post("/api/v1/ingest/extra", json={})).status_code == 404
        assert (await fb.client.post("/healthz", json={})).status_code == 405


async def test_ingest_off_leaves_health_and_metrics(tmp_path: Path) -> None:
    async with serve(tmp_path, http={"ingest": False}) as fb:
        assert (await fb.post({"device": "d", "readings": {"t": 1}})).status_code == 404
        assert (await fb.client.get("/healthz")).status_code == 200
        assert (await fb.client.get("/metrics")).status_code == 200


async def test_metrics_count_ingest_outcomes(tmp_path: Path) -> None:
    async with serve(tmp_path) as fb:
        for n in range(3):
            response = await fb.post({"device": "d", "id": f"m{n}", "readings": {"t": n}})
            assert response.status_code == 200
        assert (await fb.post({"device": "d", "id": "m0", "readings": {"t": 0}})).json()[
            "duplicates"
        ] == 1
        assert (await fb.post({"device": "d", "readings": {"t": "x"}})).status_code == 422
        bad = await fb.client.post(
            INGEST, content=b"{", headers={"Content-Type": "application/json"}
        )
        assert bad.status_code == 400

        text = await fb.metrics()
        assert "fieldbridge_ingest_payloads_total{" in text

        def ingest(outcome: str) -> float | None:
            return sample(text, "fieldbridge_ingest_payloads_total", source="http", outcome=outcome)

        assert ingest("accepted") == 3
        assert ingest("duplicate") == 1
        assert ingest("rejected") == 2
        assert sample(text, "fieldbridge_quarantined_total", source="http") == 2
        commits = sample(text, "fieldbridge_commit_batch_size_count")
        assert commits is not None and 1 <= commits <= 6
        assert sample(text, "fieldbridge_commit_batch_size_sum") == 6
        assert sample(text, "fieldbridge_commit_seconds_count") == commits
        assert sample(text, "fieldbridge_commit_seconds_bucket", le="+Inf") == commits
        # Without sinks no sink has samples (the families are still described).
        assert sample(text, "fieldbridge_sink_sent_messages_total") is None
        assert "# TYPE fieldbridge_sink_lag_messages gauge" in text


async def test_webhook_sink_in_health_and_metrics(tmp_path: Path) -> None:
    async with WebhookReceiver() as hook:
        sinks = {"webhook": [{"name": "hook", "url": hook.url, "max_backoff": 1.0}]}
        async with serve(tmp_path, sinks=sinks) as fb:
            hook.poison(2)  # the receiver refuses message 2 for good
            response = await fb.post(
                [
                    {"device": "d", "readings": {"t": 1}},
                    {"device": "d", "readings": {"t": 2}},
                    {"device": "d", "readings": {"t": 3}},
                ]
            )
            assert response.json() == {"ids": [1, 2, 3], "duplicates": 0}
            await hook.wait_for(lambda: sorted(hook.ingested_ids) == [1, 3])

            # The sink counts after the receiver's answer arrived; give it a moment.
            async def settled() -> str:
                for _ in range(100):
                    text = await fb.metrics()
                    sent = sample(text, "fieldbridge_sink_sent_messages_total", sink="hook")
                    dead = sample(
                        text, "fieldbridge_sink_dead_lettered_messages_total", sink="hook"
                    )
                    if sent == 2 and dead == 1:
                        return text
                    await asyncio.sleep(0.05)
                raise AssertionError(f"sink metrics did not settle:\n{text}")

            text = await settled()
            failed = sample(text, "fieldbridge_sink_failed_attempts_total", sink="hook")
            assert failed is not None and failed >= 1
            assert sample(text, "fieldbridge_sink_lag_messages", sink="hook") is not None
            assert sample(text, "fieldbridge_sink_lag_seconds", sink="hook") is not None
            assert hook.violations == []

            health = (await fb.client.get("/healthz")).json()
            assert health["status"] == "ok" and health["store"] == "ok"
            assert set(health["sinks"]) == {"hook"}
            assert health["sinks"]["hook"]["type"] == "webhook"
            assert health["sinks"]["hook"]["state"] in ("idle", "running")
            dead = await fb.store.list_dead_letters(sink="hook")
            assert [(d.message_id, d.status) for d in dead] == [(2, 400)]
