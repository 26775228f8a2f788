"""`fieldbridge run --preset mqtt-handler` from the seed's environment variables alone, on a
broker that takes TLS with a client certificate and a password only, answering every remote
command in the seed's shapes; HMAC on and off; reboot exits for the supervisor."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import wait_until
from tests.support.certs import make_certs
from tests.support.mqtt_broker import Mosquitto
from tests.support.processes import FIELDBRIDGE, child_env, free_port
from tests.support.redis_server import RedisServer

UUID = "4f1c0de"
REBOOT_EXIT = 75


class Subscriber:
    """A paho client with the broker's password, recording everything it receives."""

    def __init__(self, port: int) -> None:
        self.seen: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{time.time_ns()}")
        self.client.username_pw_set("edge", "s3cret")
        self.client.on_message = self._record
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe("#", 1)
        assert done.wait(5), "no SUBACK"

    def _record(self, c: Any, u: Any, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.seen.append((message.topic, bytes(message.payload)))

    def on(self, topic: str) -> list[Any]:
        with self._lock:
            return [json.loads(p) for t, p in self.seen if t == topic]

    def send(self, topic: str, payload: bytes | str) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[tuple[Mosquitto, RedisServer, dict[str, str]]]:
    """A broker with a plain listener and a TLS one (client certificate required), both
    password only; a Redis; and the seed's environment for the TLS listener."""
    certs = make_certs(tmp_path / "certs")
    passwords = tmp_path / "passwords"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "edge", "s3cret"], check=True)
    tls_port = free_port()
    extra = [
        f"password_file {passwords}",
        f"listener {tls_port} 127.0.0.1",
        f"cafile {certs['ca.pem']}",
        f"certfile {certs['server.pem']}",
        f"keyfile {certs['server.key']}",
        "require_certificate true",
    ]
    with (
        Mosquitto(tmp_path / "broker", extra=extra, anonymous=False) as broker,
        RedisServer(tmp_path / "redis") as redis_server,
    ):
        env = {
            "REDIS_HOST": "127.0.0.1",
            "REDIS_PORT": str(redis_server.port),
            "REDIS_DB": "0",
            "MQTT_HOST": "127.0.0.1",
            "MQTT_PORT": str(tls_port),
            "MQTT_KEEPALIVE_SECONDS": "30",
            "MQTT_USERNAME": "edge",
            "MQTT_PASSWORD": "s3cret",
            "MQTT_TLS_INSECURE": "false",
            "MQTT_TLS_CA_CERTS": str(certs["ca.pem"]),
            "MQTT_TLS_CERTFILE": str(certs["client.pem"]),
            "MQTT_TLS_KEYFILE": str(certs["client.key"]),
            "MQTT_TOPIC_BROADCAST": "sensors/all/commands",
            "MQTT_TOPIC_REQUEST": "sensors/%(device_uuid)s/commands",
            "MQTT_TOPIC_RESPONSE": "sensors/%(device_uuid)s/responses",
            "MQTT_TOPIC_VALUES": "sensors/%(app_name)s/%(device_uuid)s/values",
            "BALENA_DEVICE_UUID": UUID,
            "BALENA_DEVICE_TYPE": "raspberrypi4-64",
            "BALENA_APP_ID": "1234",
            "BALENA_APP_NAME": "airq",
        }
        yield broker, redis_server, env


def spawn(workdir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`fieldbridge run --preset mqtt-handler` with no settings file; only the HTTP port is
    moved off 8080 (other tests share this machine)."""
    workdir.mkdir(parents=True, exist_ok=True)
    extra = {**env, "FIELDBRIDGE_HTTP__LISTEN": f"127.0.0.1:{free_port()}"}
    log = (workdir / "fieldbridge.log").open("ab")
    return subprocess.Popen(
        [FIELDBRIDGE, "run", "--preset", "mqtt-handler"],
        cwd=workdir,
        env=child_env(extra),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(20)


RESPONSES = f"sensors/{UUID}/responses"
REQUEST = f"sensors/{UUID}/commands"
BROADCAST = "sensors/all/commands"
VALUES = f"sensors/airq/{UUID}/values"


def test_the_preset_publishes_over_tls_and_answers_every_command(
    tmp_path: Path, edge: tuple[Mosquitto, RedisServer, dict[str, str]]
) -> None:
    broker, redis_server, env = edge
    r = redis_server.client()
    old = [r.xadd("measurement:values", {"pm25": str(n)}) for n in range(3)]
    r.set("mqtt_sender:last_id", "(" + old[-1])  # what the seed had sent before the switch
    watcher = Subscriber(broker.port)
    proc = spawn(tmp_path / "fb", env)
    try:
        ids = [r.xadd("measurement:values", {"pm25": str(n), "unit": "ug/m3"}) for n in range(5)]
        # Over TLS with credentials from the first CONNECT; nothing the seed sent goes again.
        wait_until(lambda: sum(len(m) for m in watcher.on(VALUES)) == 5, "the five new entries")
        got = [item for m in watcher.on(VALUES) for item in m]
        assert [i["_id"] for i in got] == ids
        assert got[0] == {
            "_id": ids[0],
            "_device_uuid": UUID,
            "_device_type": "raspberrypi4-64",
            "_app_id": "1234",
            "_app_name": "airq",
            "pm25": "0",
            "unit": "ug/m3",
        }
        wait_until(lambda: r.get("mqtt_sender:last_id") == "(" + ids[-1], "last_id")

        def ask(topic: str, payload: Any, n: int) -> Any:
            body = payload if isinstance(payload, str) else json.dumps(payload)
            watcher.send(topic, body)
            wait_until(lambda: len(watcher.on(RESPONSES)) >= n, f"reply {n}")
            return watcher.on(RESPONSES)[n - 1]

        r.set("measurement:interval", "5")
        assert ask(REQUEST, {"command": "get_config", "key": "measurement:interval"}, 1) == {
            "command": "get_config",
            "key": "measurement:interval",
            "value": "5",
        }
        assert ask(BROADCAST, {"command": "GET_CONFIG", "key": "mqtt_sender:nothing"}, 2) == {
            "command": "get_config",
            "key": "mqtt_sender:nothing",
            "value": None,
        }
        assert ask(
            REQUEST, {"command": "set_config", "key": "mqtt_sender:interval", "value": 2}, 3
        ) == {
            "command": "set_config",
            "key": "mqtt_sender:interval",
            "value": 2,
        }
        assert r.get("mqtt_sender:interval") == "2"
        # Outside the allow-list: an error reply, nothing written.
        refused = ask(BROADCAST, {"command": "set_config", "key": "other", "value": "x"}, 4)
        assert refused["command"] == "set_config" and "allow_keys" in refused["error"]
        assert r.get("other") is None
        assert "invalid JSON" in ask(REQUEST, "{not json", 5)["error"]
        assert "unknown command" in ask(REQUEST, {"command": "selfdestruct"}, 6)["error"]
        assert 'needs "key"' in ask(REQUEST, {"command": "get_config"}, 7)["error"]
        assert "JSON object" in ask(REQUEST, "[1, 2]", 8)["error"]
        status = ask(REQUEST, {"command": "status"}, 9)
        assert status["command"] == "status" and status["version"]
        assert status["sources"]["measurement"]["committed"] == 5
        assert status["sinks"]["mqtt-handler"]["lag_messages"] == 0
        sinks = ask(BROADCAST, {"command": "sinks"}, 10)["sinks"]
        assert [(s["name"], s["type"]) for s in sinks] == [("mqtt-handler", "mqtt")]
        devices = ask(REQUEST, {"command": "devices"}, 11)
        assert devices["count"] == 1 and devices["devices"][0]["id"] == UUID
        # send_measurements: XRANGE semantics, "(" allowed, count; last_id untouched.
        before = len(watcher.on(VALUES))
        watcher.send(
            REQUEST,
            json.dumps(
                {
                    "command": "send_measurements",
                    "min_id": "(" + old[0],
                    "max_id": ids[1],
                    "count": 4,
                }
            ),
        )
        wait_until(lambda: len(watcher.on(VALUES)) > before, "the requested entries")
        resent = [i["_id"] for m in watcher.on(VALUES)[before:] for i in m]
        assert resent == [old[1], old[2], ids[0], ids[1]]
        assert r.get("mqtt_sender:last_id") == "(" + ids[-1]
        assert len(watcher.on(RESPONSES)) == 11  # no reply, as the seed
        # Over control.max_payload_bytes: refused, and kept only as far as that takes.
        huge = json.dumps({"command": "status", "pad": "x" * 100_000})
        assert "max_payload_bytes" in ask(REQUEST, huge, 12)["error"]
        # The loop survived all of it; reboot answers, then exits for the supervisor.
        assert ask(BROADCAST, {"command": "reboot"}, 13) == {"command": "reboot"}
        assert proc.wait(20) == REBOOT_EXIT
        log = (tmp_path / "fb" / "fieldbridge.log").read_text()
        assert "s3cret" not in log
    finally:
        stop(proc)
        watcher.close()


def sign(secret: str, body: dict[str, Any]) -> dict[str, Any]:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return {**body, "hmac": hmac.new(secret.encode(), canonical, hashlib.sha256).hexdigest()}


def test_hmac_when_a_secret_is_set(
    tmp_path: Path, edge: tuple[Mosquitto, RedisServer, dict[str, str]]
) -> None:
    broker, redis_server, env = edge
    redis_server.client().set("mqtt_sender:enabled", "1")
    watcher = Subscriber(broker.port)
    proc = spawn(tmp_path / "fb", {**env, "FIELDBRIDGE_CONTROL__HMAC_SECRET": "shared-key"})
    try:
        command = {"command": "get_config", "key": "mqtt_sender:enabled"}
        log = tmp_path / "fb" / "fieldbridge.log"
        wait_until(lambda: "control: listening on" in log.read_text(), "control subscribed")
        watcher.send(REQUEST, json.dumps(command))
        wait_until(lambda: watcher.on(RESPONSES), "an answer to an unsigned command")
        assert 'missing "hmac"' in watcher.on(RESPONSES)[0]["error"]
        n = len(watcher.on(RESPONSES))
        watcher.send(REQUEST, json.dumps(sign("wrong", {**command, "ts": time.time()})))
        watcher.send(REQUEST, json.dumps(sign("shared-key", {**command, "ts": time.time() - 3600})))
        watcher.send(REQUEST, json.dumps(sign("shared-key", {**command, "ts": time.time()})))
        wait_until(lambda: len(watcher.on(RESPONSES)) == n + 3, "three replies")
        bad, stale, good = watcher.on(RESPONSES)[n:]
        assert 'bad "hmac"' in bad["error"]
        assert '"ts"' in stale["error"]
        assert good == {"command": "get_config", "key": "mqtt_sender:enabled", "value": "1"}
    finally:
        stop(proc)
        watcher.close()


def test_the_preset_names_a_missing_variable(tmp_path: Path) -> None:
    done = subprocess.run(
        [FIELDBRIDGE, "run", "--preset", "mqtt-handler"],
        cwd=tmp_path,
        env=child_env({"MQTT_HOST": "127.0.0.1"}),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "BALENA_DEVICE_UUID" in done.stderr + done.stdout
