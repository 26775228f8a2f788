"""A store that stops answering (issue 10, point 6): devices are told to retry within the commit
deadline, /healthz says so within 2 s, and the service recovers by itself afterwards."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg

from tests.conftest import TABLES, wait_until
from tests.support.processes import FieldbridgeProcess
from tests.support.tcp_proxy import FreezableProxy

COMMIT_TIMEOUT_S = 3.0  # store.commit_timeout_s of the service under test
MARGIN = 3.0  # seconds of slack on a loaded 2-core machine
HEALTHZ_PROMISE = 2.0  # docs/operations.md: /healthz answers within 2 s
# How long the store stays hung: longer than psycopg's cancel-then-close of a hung connection
# (up to 10 s), so the pool is left to reconnect through the frozen proxy as well.
FREEZE_S = 12.0


def message(key: str) -> dict[str, object]:
    return {"device": "hung", "id": key, "readings": {"t": int(key[1:])}}


def timed_post(client: httpx.Client, url: str, key: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    answer = client.post(url, json=message(key))
    return answer, time.monotonic() - started


def test_a_hung_postgresql_gets_503_in_time_then_recovers(tmp_path: Path, pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY")
    target = urlsplit(pg_url)
    assert target.hostname == "127.0.0.1"
    with FreezableProxy((target.hostname, target.port or 5432)) as proxy:
        proxied = f"postgresql://postgres@127.0.0.1:{proxy.port}{target.path}"
        store = {"url": proxied, "commit_timeout_s": COMMIT_TIMEOUT_S, "connect_timeout_s": 2}
        with (
            FieldbridgeProcess(tmp_path / "svc", store=store) as fb,
            httpx.Client(timeout=30.0) as client,
        ):
            fb.start()
            acknowledged: dict[str, int] = {}
            for key in ("m0", "m1", "m2"):
                answer, _ = timed_post(client, fb.ingest_url, key)
                assert answer.status_code == 200, answer.text
                acknowledged[key] = answer.json()["ids"][0]

            proxy.freeze()
            # Two in a row: the first hangs on a pooled connection, the next finds no
            # connection that answers (the pool's check hangs as well).
            for key in ("m3", "m4"):
                refused, took = timed_post(client, fb.ingest_url, key)
                assert refused.status_code == 503, refused.text
                assert refused.headers["retry-after"].isdigit()
                assert "store.commit_timeout_s" in refused.json()["error"]
                assert took < COMMIT_TIMEOUT_S + MARGIN, f"503 after {took:.1f} s"

            # /healthz keeps its promise for as long as the freeze lasts: past the time psycopg
            # takes to give up on the hung connections, while the pool's reconnects hang too.
            frozen_until = time.monotonic() + FREEZE_S
            looks = 0
            while time.monotonic() < frozen_until or looks < 2:
                looks += 1
                started = time.monotonic()
                sick = client.get(f"{fb.base_url}/healthz")
                took = time.monotonic() - started
                assert took < HEALTHZ_PROMISE + MARGIN / 2, f"/healthz took {took:.1f} s"
                assert sick.status_code == 503
                body = sick.json()
                assert body["status"] == "unavailable"
                assert body["store"].startswith("unreachable: PostgreSQL store postgresql://")
                assert "did not answer within 1.5 s (the /healthz store check)" in body["store"]

            proxy.thaw()
            # The devices retry what was refused; the service takes it without a restart.
            for key in ("m3", "m4"):
                retried = wait_until(
                    lambda key=key: (
                        (a := timed_post(client, fb.ingest_url, key)[0]).status_code == 200 and a
                    ),
                    f"{key} accepted after the thaw",
                    timeout=60.0,
                    step=0.5,
                )
                acknowledged[key] = retried.json()["ids"][0]
            healthy = wait_until(
                lambda: (h := client.get(f"{fb.base_url}/healthz")).status_code == 200 and h,
                "/healthz ok after the thaw",
            )
            assert healthy.json()["store"] == "ok"
            assert fb.running

    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT id, idem_key FROM journal ORDER BY id").fetchall()
    stored = {mid for mid, _ in rows}
    assert set(acknowledged.values()) <= stored
    # Each message once, the retried ones included (a commit that reached the server after
    # its deadline would have been found by its idempotency key, not stored twice).
    keys = [key for _, key in rows]
    assert len(keys) == len(set(keys)) == len(acknowledged)


def test_a_service_started_against_a_hung_postgresql_exits_at_the_migration_deadline(
    tmp_path: Path, pg_url: str
) -> None:
    """Start-up migrates first: against a store that does not answer, `fieldbridge run` exits 1
    within store.migrate_timeout_s naming the store and the setting, instead of hanging (a
    service manager restarts it); once the store answers, it starts. The connect timeout is
    set longer than the deadline here so that the deadline, not libpq, ends the wait."""
    target = urlsplit(pg_url)
    with FreezableProxy((target.hostname or "127.0.0.1", target.port or 5432)) as proxy:
        proxied = f"postgresql://postgres@127.0.0.1:{proxy.port}{target.path}"
        store = {"url": proxied, "migrate_timeout_s": 3.0, "connect_timeout_s": 60}
        with FieldbridgeProcess(tmp_path / "svc", store=store) as fb:
            proxy.freeze()
            started = time.monotonic()
            fb.spawn()
            code = fb.wait(3.0 + 3 * MARGIN)
            took = time.monotonic() - started
            output = fb.output_since_start()
            assert code == 1, output
            assert took < 3.0 + 3 * MARGIN, f"exited after {took:.1f} s"
            assert "store.migrate_timeout_s" in output, output
            assert f"127.0.0.1:{proxy.port}" in output and "Traceback" not in output, output

            proxy.thaw()
            fb.start()
            assert httpx.get(f"{fb.base_url}/healthz", timeout=10.0).status_code == 200
