"""The MQTT source against a real Mosquitto of its own: acknowledged only after commit,
lossless across SIGKILLs and broker restarts, shared subscriptions, TLS, credentials, status."""

from __future__ import annotations

import json
import random
import shlex
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fieldbridge.sources.mqtt import DEFAULT_RUN
from tests.conftest import wait_until
from tests.support import paths
from tests.support.certs import make_certs
from tests.support.locks import sqlite_write_locked
from tests.support.mqtt_broker import Mosquitto, Publisher, retained, watching
from tests.support.mqtt_tap import MqttTap
from tests.support.processes import FieldbridgeProcess, free_port

TOPIC = "site/levels"


def source(url: str, **settings: Any) -> dict[str, Any]:
    """A [[sources.mqtt]] entry on `url` taking the test publisher's http-json messages."""
    return {
        "name": "mqtt",
        "url": url,
        "client_id": f"fb-test-{uuid.uuid4().hex[:8]}",
        "topics": [f"{TOPIC}/#"],
        "codec": "http-json",
        "keepalive": 5,
        "max_backoff": 1.0,
        **settings,
    }


def service(workdir: Path, url: str, name: str = "fieldbridge", **settings: Any) -> Any:
    store = settings.pop("store", {})
    ingest = settings.pop("ingest", {})
    return FieldbridgeProcess(
        workdir,
        name=name,
        sources={"mqtt": [source(url, **settings)]},
        store=store,
        ingest=ingest,
        log={"level": "info", "levels": {"fieldbridge.sources.mqtt": "debug"}},
    )


def subscriptions(process: FieldbridgeProcess) -> int:
    """How often the source (re)subscribed since the process was created."""
    return process.output().count("; subscribed to")


def wait_subscribed(process: FieldbridgeProcess, times: int = 1, timeout: float = 15.0) -> None:
    wait_until(
        lambda: subscriptions(process) >= times, "the source's subscription", timeout=timeout
    )


def stored(process: FieldbridgeProcess) -> dict[str, int]:
    """Message id ("m<n>") -> journal rows holding it."""
    rows = process.query("SELECT idem_key, count(*) FROM journal GROUP BY idem_key")
    return {key: n for key, n in rows}


def assert_stored_once(process: FieldbridgeProcess, acked: set[str], timeout: float) -> None:
    wait_until(lambda: acked <= set(stored(process)), "every acknowledged message", timeout=timeout)
    rows = stored(process)
    assert all(n == 1 for n in rows.values()), {k: n for k, n in rows.items() if n > 1}
    # One reading per message: a redelivery made no second reading either.
    [(readings, messages)] = process.query(
        "SELECT (SELECT count(*) FROM readings), (SELECT count(*) FROM journal)"
    )
    assert readings == messages


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as running:
        yield running


@pytest.fixture
def publisher(broker: Mosquitto) -> Iterator[Publisher]:
    pub = Publisher(broker.port, TOPIC)
    try:
        yield pub
    finally:
        pub.close()


def test_puback_only_after_commit_and_redelivery(
    tmp_path: Path, broker: Mosquitto, publisher: Publisher
) -> None:
    with (
        MqttTap(broker.port) as tap,
        service(tmp_path / "fb", tap.url, store={"busy_timeout_ms": 100}) as fb,
    ):
        fb.start()
        wait_subscribed(fb)
        with sqlite_write_locked(fb.db_path):
            publisher.burst(20)
            publisher.wait_all_acked()
            wait_until(lambda: tap.publishes() >= 20, "the broker to deliver the burst", timeout=10)
            time.sleep(1.5)  # commits fail while the lock is held; reconnects redeliver
            assert tap.pubacks() == 0, "a PUBACK left before the message was committed"
            assert stored(fb) == {}
        assert_stored_once(fb, publisher.acked(), timeout=15)
        # The tap's relay thread may still be counting the PUBACKs that followed the commit.
        wait_until(lambda: tap.pubacks() >= 20, "the PUBACKs through the tap", timeout=20)
        assert tap.connections >= 2  # the source reconnected after the store failure ...
        assert tap.redelivered >= 20  # ... and the broker sent the burst again (DUP)
        assert "the store failed" in fb.output()


def test_sigkill_under_load_loses_nothing(
    tmp_path: Path, broker: Mosquitto, publisher: Publisher
) -> None:
    with service(tmp_path / "fb", broker.url) as fb:
        fb.start()
        wait_subscribed(fb)
        publisher.start()
        for _ in range(5):
            time.sleep(
                random.uniform(0.4, 0.9)
            )  # load runs meanwhile: pacing, not waiting for a condition
            fb.kill()
            fb.start()  # the broker queued for the session meanwhile
        time.sleep(0.5)  # load runs meanwhile: pacing, not waiting for a condition
        publisher.stop()
        publisher.wait_all_acked()
        acked = publisher.acked()
        assert len(acked) > 1000
        assert_stored_once(fb, acked, timeout=20)


def test_broker_restart_loses_nothing_and_reconnects(
    tmp_path: Path, broker: Mosquitto, publisher: Publisher
) -> None:
    with service(tmp_path / "fb", broker.url) as fb:
        fb.start()
        wait_subscribed(fb)
        publisher.start()
        time.sleep(1.0)  # load runs meanwhile: pacing, not waiting for a condition
        broker.restart(down_for=0.5)
        wait_subscribed(fb, times=2, timeout=5)  # back within seconds
        time.sleep(1.0)  # load runs meanwhile: pacing, not waiting for a condition
        publisher.stop()
        publisher.wait_all_acked()
        assert_stored_once(fb, publisher.acked(), timeout=20)
        output = fb.output()
        assert output.count("disconnected from") == 1  # logged once, not per attempt


def test_shared_subscription_splits_the_load(
    tmp_path: Path, broker: Mosquitto, publisher: Publisher
) -> None:
    shared = {"topics": [f"$share/fieldbridge/{TOPIC}/#"], "status_topic": ""}
    with (
        service(tmp_path / "a", broker.url, **shared) as a,
        service(tmp_path / "b", broker.url, **shared) as b,
    ):
        a.start()
        b.start()
        wait_subscribed(a)
        wait_subscribed(b)
        publisher.burst(600)
        publisher.wait_all_acked()
        acked = publisher.acked()
        wait_until(lambda: len(stored(a)) + len(stored(b)) >= len(acked), "both stores", timeout=20)
        in_a, in_b = set(stored(a)), set(stored(b))
        assert in_a | in_b == acked
        assert not in_a & in_b
        assert min(len(in_a), len(in_b)) > len(acked) / 5  # each took a real share


def test_tls_client_certificate_and_password(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    passwords = tmp_path / "passwords"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwords), "fieldbridge", "s3cret"], check=True
    )
    tls_port = free_port()
    tls = [
        f"password_file {passwords}",
        f"listener {tls_port} 127.0.0.1",
        f"cafile {certs['ca.pem']}",
        f"certfile {certs['server.pem']}",
        f"keyfile {certs['server.key']}",
        "require_certificate true",
    ]
    with Mosquitto(tmp_path / "broker", extra=tls, anonymous=False) as broker:
        settings = {
            "username": "fieldbridge",
            "password": "s3cret",
            "ca_file": str(certs["ca.pem"]),
            "cert_file": str(certs["client.pem"]),
            "key_file": str(certs["client.key"]),
        }
        with service(tmp_path / "fb", f"mqtts://127.0.0.1:{tls_port}", **settings) as fb:
            fb.start()
            wait_subscribed(fb)
            pub = Publisher(broker.port, TOPIC, username="fieldbridge", password="s3cret")
            try:
                pub.burst(50)
                pub.wait_all_acked()
                assert_stored_once(fb, pub.acked(), timeout=10)
            finally:
                pub.close()
            shown = fb.cli("config", "show", "--json")
            assert "s3cret" not in shown.stdout and "**********" in shown.stdout

        # A CA that did not sign the broker's certificate: a clear TLS error.
        other = make_certs(tmp_path / "other-certs")
        wrong_ca = {**settings, "ca_file": str(other["ca.pem"])}
        with service(tmp_path / "ca", f"mqtts://127.0.0.1:{tls_port}", **wrong_ca) as fb:
            fb.start()
            wait_until(lambda: "TLS certificate" in fb.output(), "the TLS error", timeout=10)
            assert "check ca_file" in fb.output()


def test_wrong_credentials_are_named_and_retried(tmp_path: Path) -> None:
    passwords = tmp_path / "passwords"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwords), "fieldbridge", "right"], check=True
    )
    extra = [f"password_file {passwords}"]
    with (
        Mosquitto(tmp_path / "broker", extra=extra, anonymous=False) as broker,
        MqttTap(broker.port) as tap,
    ):
        wrong = {"username": "fieldbridge", "password": "wrong"}
        with service(tmp_path / "fb", tap.url, **wrong) as fb:
            fb.start()
            wait_until(lambda: tap.connections >= 4, "repeated connection attempts", timeout=40)
            refusals = [x for x in fb.output().splitlines() if "refused the connection" in x]
            assert len(refusals) >= 4  # every attempt, but only the first one above DEBUG
            assert [x for x in refusals if " DEBUG " not in x] == refusals[:1]
            assert " ERROR " in refusals[0]
            assert "sources.mqtt.mqtt username and password" in refusals[0]
            assert "wrong" not in refusals[0]


def test_status_is_retained_online_and_offline(tmp_path: Path, broker: Mosquitto) -> None:
    status = "fieldbridge/mqtt/status"
    with service(tmp_path / "fb", broker.url) as fb:
        fb.start()
        wait_subscribed(fb)
        assert retained(broker.port, status) == b"online"
        with watching(broker.port, status) as watcher:
            fb.kill()  # the broker publishes the will
            watcher.wait_for(status, b"offline")
            fb.start()
            watcher.wait_for(status, b"online")
            fb.terminate()  # a graceful stop says offline itself
            assert fb.wait(15) == 0
            watcher.wait_for(status, b"offline")
        assert retained(broker.port, status) == b"offline"

    custom = "plant/7/fieldbridge"
    with service(tmp_path / "custom", broker.url, status_topic=custom) as fb:
        fb.start()
        wait_subscribed(fb)
        assert retained(broker.port, custom) == b"online"


def test_embedded_broker_starts_when_none_answers(tmp_path: Path) -> None:
    port = free_port()
    url = f"mqtt://127.0.0.1:{port}"
    with service(tmp_path / "fb", url, embedded_broker="auto") as fb:
        fb.start()
        wait_subscribed(fb)
        assert "started an embedded Mosquitto" in fb.output()
        pub = Publisher(port, TOPIC)
        try:
            pub.burst(10)
            pub.wait_all_acked()
            assert_stored_once(fb, pub.acked(), timeout=10)
        finally:
            pub.close()
        fb.terminate()
        assert fb.wait(15) == 0
        assert "embedded broker stopped" in fb.output()
    with pytest.raises(OSError):
        Publisher(port, TOPIC)  # nothing answers any more


def test_embedded_broker_uses_the_broker_present(tmp_path: Path, broker: Mosquitto) -> None:
    with service(tmp_path / "fb", broker.url, embedded_broker="auto") as fb:
        fb.start()
        wait_subscribed(fb)
        output = fb.output()
        assert f"using the MQTT broker that answers on 127.0.0.1:{broker.port}" in output
        assert "started an embedded" not in output


def test_readme_mqtt_step_with_the_default_run_source(tmp_path: Path, broker: Mosquitto) -> None:
    """The README's mosquitto_pub line, against the default run's "mqtt" source."""
    readme = (paths.ROOT / "README.md").read_text()
    line = next(x for x in readme.splitlines() if x.startswith("mosquitto_pub "))
    [default] = [e for e in DEFAULT_RUN if e["name"] == "mqtt"]
    entry = {**default, "url": broker.url, "embedded_broker": "off", "client_id": "readme"}
    with FieldbridgeProcess(tmp_path / "fb", sources={"mqtt": [entry]}) as fb:
        fb.start()
        wait_subscribed(fb)
        command = [*shlex.split(line), "-p", str(broker.port)]
        subprocess.run(command, check=True, timeout=10)
        device = command[command.index("-t") + 1].split("/")[1]
        wait_until(lambda: bool(fb.query("SELECT 1 FROM readings")), "the reading", timeout=10)
        readings = json.loads(fb.cli("readings", "list", "--device", device, "--json").stdout)
        assert [(r["quantity"], r["value"]) for r in readings] == [("level", 1.82)]
