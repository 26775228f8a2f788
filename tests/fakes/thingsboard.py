"""A fake ThingsBoard MQTT endpoint: a real Mosquitto that checks tokens, plus a checking
subscriber that validates and records what arrives (spec integrations.md §3.6).

What is real: Mosquitto authenticates every CONNECT against a password file whose users are
the access tokens, so an unknown token gets CONNACK 5 from the broker itself; its ACL lets
gateway tokens write only `v1/gateway/*` and device tokens only their own `v1/devices/me/*`;
PUBACKs and persistence are Mosquitto's. The sink talks to a small front
(tests/support/mqtt_front.py) because Mosquitto cannot have users without a password (the
front adds the token's password to CONNECT, and answers CONNACK 4 to an empty username as
ThingsBoard does) nor tell a subscriber who published (the front prefixes device-API topics
with `tb/<token>/`).
What is injected: the rate-limit notice `{"device", "reason": 150}` on `v1/gateway/disconnect`,
published by `rate_limit()` through the same broker, as ThingsBoard would send it.
Not reproduced: CONNACK 4 for an empty username (Mosquitto answers 5 for every refusal).
"""

from __future__ import annotations

import json
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import wait_until
from tests.support.mqtt_broker import Mosquitto
from tests.support.mqtt_front import MqttFront
from tests.support.processes import free_port

CHECKER = "fake-tb-checker"
CHECKER_PASSWORD = "checker-password"
MS_AFTER = 100_000_000_000  # a ts below this is seconds (before 1973 in ms), not milliseconds


@dataclass
class Recorded:
    """What the fake ThingsBoard ingested, per device."""

    timeseries: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    points: dict[str, int] = field(default_factory=dict)  # points received, duplicates counted
    untimed: dict[str, int] = field(default_factory=dict)  # flat points without ts
    # (device, values as sorted JSON) of every point: counts distinct readings whatever ts
    # a sender stamps on them (ThingsBoard IoT Gateway stamps its own receive time)
    distinct_values: set[tuple[str, str]] = field(default_factory=set)
    attributes: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: dict[str, str | None] = field(default_factory=dict)  # connect: device -> type
    publishes: int = 0


class FakeThingsBoard:
    """Mosquitto with token users and ACLs, and a subscriber that checks every message."""

    def __init__(
        self,
        workdir: Path,
        *,
        gateway_tokens: dict[str, str] | None = None,  # token -> gateway name
        device_tokens: dict[str, str] | None = None,  # token -> device name
    ) -> None:
        self.gateway_tokens = dict(gateway_tokens or {})
        self.device_tokens = dict(device_tokens or {})
        workdir.mkdir(parents=True, exist_ok=True)
        self._passwords = workdir / "tokens.passwd"
        self._acl = workdir / "tokens.acl"
        self._write_auth()
        self.broker = Mosquitto(
            workdir / "broker",
            anonymous=False,
            extra=[f"password_file {self._passwords}", f"acl_file {self._acl}"],
        )
        self.recorded = Recorded()
        self.violations: list[str] = []
        self._lock = threading.Lock()
        self._checker: paho.Client | None = None
        self.front = MqttFront(free_port(), self.broker.port, self._token_passwords())

    def _token_passwords(self) -> dict[str, str]:
        return {t: f"pw-{t}" for t in [*self.gateway_tokens, *self.device_tokens]}

    @property
    def url(self) -> str:
        """Where the sink connects: the front."""
        return f"mqtt://127.0.0.1:{self.front.port}"

    @property
    def port(self) -> int:
        return self.front.port

    def _write_auth(self) -> None:
        self._passwords.write_text("")
        users = {CHECKER: CHECKER_PASSWORD, **self._token_passwords()}
        for user, password in users.items():
            subprocess.run(
                ["mosquitto_passwd", "-b", str(self._passwords), user, password], check=True
            )
        lines = [f"user {CHECKER}", "topic read #", "topic write v1/gateway/disconnect"]
        lines += ["topic write v1/devices/me/rpc/response/#", ""]
        for token in self.gateway_tokens:
            # A gateway is a device too: it may ask the device API (session limits, RPC).
            lines += [f"user {token}", "topic readwrite v1/gateway/#", "topic read v1/devices/me/#"]
            lines += [""]
        # Device tokens reach the broker through the front, which prefixes tb/<token>/.
        lines += ["pattern write tb/%u/v1/devices/me/#", ""]
        self._acl.write_text("\n".join(lines))

    # --- broker life ----------------------------------------------------------------------

    def start(self) -> None:
        self.broker.start()
        self.front.start()
        self._connect_checker()

    def stop(self) -> None:
        """SIGTERM: Mosquitto saves what it acknowledged (ThingsBoard's database would)."""
        self.broker.stop()

    def restart(self) -> None:
        self.broker.start()
        checker = self._checker
        assert checker is not None
        wait_until(lambda: checker.is_connected(), "the checker back on the fake ThingsBoard")

    def close(self) -> None:
        if self._checker is not None:
            self._checker.disconnect()
            self._checker.loop_stop()
        self.front.close()
        self.broker.kill()

    def __enter__(self) -> FakeThingsBoard:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connect_checker(self) -> None:
        # A persistent session at QoS 2: what arrives while it reconnects is kept for it, and
        # each message comes at the QoS it was published with (so QoS 2 shows).
        checker = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="fake-tb-checker", clean_session=False
        )
        checker.username_pw_set(CHECKER, CHECKER_PASSWORD)
        checker.reconnect_delay_set(0.05, 0.5)
        subscribed = threading.Event()

        def on_connect(client: paho.Client, *args: Any) -> None:
            client.subscribe([("v1/#", 2), ("tb/#", 2)])

        checker.on_connect = on_connect
        checker.on_subscribe = lambda *a: subscribed.set()
        checker.on_message = self._check
        checker.connect("127.0.0.1", self.broker.port, keepalive=10)
        checker.loop_start()
        if not subscribed.wait(10):
            raise TimeoutError("the fake ThingsBoard's checker could not subscribe")
        self._checker = checker

    def rate_limit(self, device: str) -> None:
        """Send what ThingsBoard sends a gateway that went over a rate limit."""
        assert self._checker is not None
        body = json.dumps({"device": device, "reason": 150})
        self._checker.publish("v1/gateway/disconnect", body, qos=1).wait_for_publish(5)

    # --- checks -----------------------------------------------------------------------------

    def _check(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        with self._lock:
            self._take(message.topic, bytes(message.payload), message.qos)

    def _violation(self, text: str) -> None:
        self.violations.append(text)

    def _take(self, topic: str, payload: bytes, qos: int) -> None:
        if topic == "v1/gateway/disconnect" or topic.startswith("v1/devices/me/rpc/response/"):
            return  # our own notices and answers
        self.recorded.publishes += 1
        if qos > 1:
            self._violation(f"{topic}: QoS {qos}; ThingsBoard takes QoS 0 and 1 only")
        try:
            body = json.loads(payload)
        except ValueError:
            self._violation(f"{topic}: not JSON: {payload[:80]!r}")
            return
        if topic == "v1/gateway/connect":
            self._gateway_connect(body)
        elif topic == "v1/gateway/telemetry":
            self._gateway_telemetry(body)
        elif topic == "v1/gateway/attributes":
            self._gateway_attributes(body)
        elif topic.startswith("tb/"):
            token, _, rest = topic[3:].partition("/")
            device = self.device_tokens.get(token) or self.gateway_tokens.get(token)
            if rest.startswith("v1/devices/me/rpc/request/") and device is not None:
                self._client_rpc(rest.rsplit("/", 1)[1], body)
            elif device is None:
                self._violation(f"{topic}: token not a device's")
            elif rest == "v1/devices/me/telemetry":
                self._telemetry(device, body)
            elif rest == "v1/devices/me/attributes":
                self._attributes(device, body)
            else:
                self._violation(f"{topic}: not a device API topic")
        else:
            self._violation(f"{topic}: not a ThingsBoard topic")

    def _client_rpc(self, request_id: str, body: object) -> None:
        """Answer a client-side RPC; ThingsBoard IoT Gateway asks getSessionLimits first."""
        if not isinstance(body, dict) or not isinstance(body.get("method"), str):
            self._violation(f"rpc request {request_id}: {body!r} has no method")
            return
        if body["method"] != "getSessionLimits":
            return
        answer = {"maxPayloadSize": 65536, "maxInflightMessages": 100, "rateLimits": {}}
        assert self._checker is not None
        self._checker.publish(f"v1/devices/me/rpc/response/{request_id}", json.dumps(answer), 1)

    def _gateway_connect(self, body: object) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("device"), str):
            self._violation(f"v1/gateway/connect: {body!r} names no device")
            return
        kind = body.get("type")
        if kind is not None and not isinstance(kind, str):
            self._violation(f"v1/gateway/connect: type {kind!r} is not text")
        self.recorded.created[body["device"]] = kind

    def _gateway_telemetry(self, body: object) -> None:
        if not isinstance(body, dict) or not body:
            self._violation(f"v1/gateway/telemetry: {body!r} is not an object of devices")
            return
        for device, found in body.items():
            if not isinstance(found, list):
                self._violation(f"v1/gateway/telemetry: {device}: not a list of points")
                continue
            self._telemetry(device, found)

    def _gateway_attributes(self, body: object) -> None:
        if not isinstance(body, dict):
            self._violation(f"v1/gateway/attributes: {body!r} is not an object of devices")
            return
        for device, values in body.items():
            self._attributes(device, values)

    def _telemetry(self, device: str, found: object) -> None:
        points = found if isinstance(found, list) else [found]
        for point in points:
            if isinstance(point, dict) and point and "ts" not in point and "values" not in point:
                # {"key": value, ...}: allowed, ThingsBoard stamps it with its receive time
                self.recorded.untimed[device] = self.recorded.untimed.get(device, 0) + 1
                continue
            if not isinstance(point, dict) or set(point) != {"ts", "values"}:
                self._violation(f"{device}: {point!r} is neither {{ts, values}} nor flat")
                continue
            ts, values = point["ts"], point["values"]
            if type(ts) is not int:
                self._violation(f"{device}: ts {ts!r} is not an integer")
                continue
            if ts < MS_AFTER:
                self._violation(f"{device}: ts {ts} looks like seconds, not milliseconds")
            if not isinstance(values, dict) or not values:
                self._violation(f"{device}: values {values!r} is not a non-empty object")
                continue
            self.recorded.distinct_values.add((device, json.dumps(values, sort_keys=True)))
            series = self.recorded.timeseries.setdefault(device, {})
            series.setdefault(ts, {}).update(values)
            self.recorded.points[device] = self.recorded.points.get(device, 0) + 1

    def _attributes(self, device: str, values: object) -> None:
        if not isinstance(values, dict):
            self._violation(f"{device}: attributes {values!r} are not a flat object")
            return
        self.recorded.attributes.setdefault(device, {}).update(values)

    # --- for assertions -----------------------------------------------------------------------

    def series(self, device: str) -> dict[int, dict[str, Any]]:
        with self._lock:
            return dict(self.recorded.timeseries.get(device, {}))
