"""A store that stops answering (issue 10, point 6): devices are told to retry within the commit
deadline, /healthz says so within 2 s, and the service recovers by itself afterwards."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg

from tests.conftest import TABLES, wait_until
from tests.support.efento_sim import Sensor, code_text, free_udp_port, measurements, serial_bytes
from tests.support.mqtt_broker import Mosquitto, Publisher
from tests.support.mqtt_tap import MqttTap
from tests.support.processes import FieldbridgeProcess
from tests.support.tcp_proxy import FreezableProxy

COMMIT_TIMEOUT_S = 3.0  # store.commit_timeout_s of the service under test
MARGIN = 3.0  # seconds of slack on a loaded 2-core machine
STARTUP = 30.0  # seconds a loaded machine may take to start Python and import fieldbridge
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
            fb.spawn()
            # Timed from the migration's first connection, not from the spawn: starting Python
            # and importing take seconds of their own on a loaded machine.
            code = fb.wait(STARTUP + 3.0 + 3 * MARGIN)
            exited = time.monotonic()
            output = fb.output_since_start()
            assert code == 1, output
            assert proxy.first_accepted is not None, output
            took = exited - proxy.first_accepted
            assert took < 3.0 + 2 * MARGIN, f"exited {took:.1f} s after connecting"
            assert "store.migrate_timeout_s" in output, output
            assert f"127.0.0.1:{proxy.port}" in output and "Traceback" not in output, output

            proxy.thaw()
            fb.start()
            assert httpx.get(f"{fb.base_url}/healthz", timeout=10.0).status_code == 200


MQTT_TOPIC = "site/hung"


def journal_keys(pg_url: str) -> list[str]:
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT idem_key FROM journal WHERE source = 'mqtt'").fetchall()
    return [key for (key,) in rows]


def efento_frames(pg_url: str, device: str) -> int:
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT count(*) FROM journal WHERE device = %s", (device,))
        return int(rows.fetchone()[0])  # type: ignore[index]


def test_a_hung_postgresql_gets_coap_5_00_and_no_puback_then_both_recover(
    tmp_path: Path, pg_url: str
) -> None:
    """The same hang as above seen by the two device protocols that retry by themselves: a
    CoAP sensor gets 5.00 within the deadline, and an MQTT message gets no PUBACK, so the
    broker redelivers it; after the thaw both are stored once."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY")
    target = urlsplit(pg_url)
    serial = serial_bytes(0x5E1)
    device = serial.hex().upper()
    coap_port = free_udp_port()
    with (
        FreezableProxy((target.hostname or "127.0.0.1", target.port or 5432)) as proxy,
        Mosquitto(tmp_path / "broker") as broker,
        MqttTap(broker.port) as tap,
    ):
        proxied = f"postgresql://postgres@127.0.0.1:{proxy.port}{target.path}"
        mqtt = {
            "name": "mqtt",
            "url": tap.url,
            "client_id": "fb-hung-store",
            "topics": [f"{MQTT_TOPIC}/#"],
            "codec": "http-json",
            "keepalive": 5,
            "max_backoff": 1.0,
        }
        # separate_after above the deadline: the 5.00 is piggy-backed on the ACK.
        efento = {"name": "efento", "listen": f"127.0.0.1:{coap_port}", "separate_after": 30}
        store = {"url": proxied, "commit_timeout_s": COMMIT_TIMEOUT_S, "connect_timeout_s": 2}
        with (
            FieldbridgeProcess(
                tmp_path / "svc", store=store, sources={"mqtt": [mqtt], "efento": [efento]}
            ) as fb,
            Sensor(coap_port) as sensor,
        ):
            publisher = Publisher(broker.port, MQTT_TOPIC)
            try:
                fb.start()
                wait_until(lambda: "; subscribed to" in fb.output(), "the MQTT subscription")
                answer = sensor.exchange("m", measurements(serial, 1_700_000_000), timeout=10.0)
                assert answer is not None and code_text(answer.code) == "2.01"
                publisher.burst(3)
                publisher.wait_all_acked()
                wait_until(lambda: tap.pubacks() >= 3, "the first PUBACKs")
                before = tap.pubacks()

                proxy.freeze()
                frame = measurements(serial, 1_700_000_300)
                started = time.monotonic()
                refused = sensor.exchange("m", frame, timeout=COMMIT_TIMEOUT_S + MARGIN)
                took = time.monotonic() - started
                assert refused is not None, "no CoAP answer within the deadline"
                assert code_text(refused.code) == "5.00", code_text(refused.code)
                assert took < COMMIT_TIMEOUT_S + MARGIN, f"5.00 after {took:.1f} s"

                publisher.burst(3)
                publisher.wait_all_acked()  # the broker has them; fieldbridge must not ack yet
                wait_until(lambda: tap.publishes() >= 6, "the broker to deliver the burst")
                # A window in which nothing may happen: no PUBACK while the store hangs.
                time.sleep(COMMIT_TIMEOUT_S + 1.0)
                assert tap.pubacks() == before, "a PUBACK left while the store did not answer"

                proxy.thaw()
                # The sensor retries its frame; the broker redelivers the unacknowledged burst.
                retried = wait_until(
                    lambda: (
                        (a := sensor.exchange("m", frame, timeout=5.0)) is not None
                        and code_text(a.code) == "2.01"
                    ),
                    "2.01 for the retried frame",
                    timeout=60.0,
                    step=0.5,
                )
                assert retried
                wait_until(
                    lambda: publisher.acked() <= set(journal_keys(pg_url)),
                    "every acknowledged MQTT message stored",
                    timeout=60.0,
                    step=0.5,
                )
                wait_until(lambda: tap.pubacks() >= before + 3, "PUBACKs after the thaw", 30.0)
                keys = journal_keys(pg_url)
                assert len(keys) == len(set(keys)) == 6, sorted(keys)
                assert efento_frames(pg_url, device) == 2  # each frame once, the retried one too
                assert fb.running
            finally:
                publisher.close()
