"""A real Mosquitto of the tests' own (free port, persistence in tmp), plus paho clients
that publish with QoS 1 and remember what the broker acknowledged, and watch topics."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from fieldbridge.sources.mqtt.broker import find_mosquitto
from tests.conftest import wait_until
from tests.support.processes import free_port

START_TIMEOUT = 10.0


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


class Mosquitto:
    """Mosquitto on 127.0.0.1:<free port>; stop/kill/restart keep its persistence file.

    Every start writes mosquitto.conf anew from the settings, so a test can turn on TLS or
    passwords between starts. `extra` lines are appended to the configuration.
    """

    def __init__(
        self, workdir: Path, *, extra: list[str] | None = None, anonymous: bool = True
    ) -> None:
        binary = find_mosquitto()
        if binary is None:
            raise RuntimeError("mosquitto is not installed (scripts/system-deps.sh)")
        self.binary = binary
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.extra = list(extra or [])
        self.anonymous = anonymous
        self.log_path = workdir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def config(self) -> str:
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'true' if self.anonymous else 'false'}",
            "user root",  # the tests may run as root: no switch to the user "mosquitto"
            "persistence true",
            f"persistence_location {self.workdir}/",
            "autosave_interval 1",
            "max_queued_messages 0",
            "max_inflight_messages 1000",
            *self.extra,
        ]
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(self.config())
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not listening(self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not start:\n{self.log_path.read_text()}")
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM: Mosquitto saves its persistence file (queued QoS 1 messages) and exits."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            self._proc.wait(10)

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)

    def freeze(self) -> None:
        """SIGSTOP: the broker keeps its sockets but answers nothing (a hung broker)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()


def client(port: int, client_id: str, *, clean: bool = True, **auth: Any) -> paho.Client:
    """A connected paho client running its own network thread."""
    mqtt = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
    if auth:
        mqtt.username_pw_set(auth["username"], auth.get("password"))
    mqtt.max_inflight_messages_set(200)
    mqtt.max_queued_messages_set(0)
    mqtt.reconnect_delay_set(0.1, 0.5)
    connected = threading.Event()
    mqtt.on_connect = lambda *a: connected.set()
    mqtt.connect("127.0.0.1", port, keepalive=10)
    mqtt.loop_start()
    if not connected.wait(5):
        raise TimeoutError(f"{client_id} could not connect to 127.0.0.1:{port}")
    return mqtt


def http_json(n: int, device: str | None = None) -> bytes:
    """Message `n` as the http-json codec takes it; "id" makes a redelivery a duplicate."""
    body = {"device": device or f"dev-{n % 7}", "readings": {"level": n}, "id": f"m{n}"}
    return json.dumps(body).encode()


def acknowledged(info: paho.MQTTMessageInfo) -> bool:
    """Whether the broker sent PUBACK for a QoS 1 message.

    Not info.is_published(): it raises for a message published while disconnected (rc
    NO_CONN) even after paho sent it on reconnect and the broker acknowledged it.
    """
    return bool(info._published)


class Publisher:
    """Publishes numbered messages (QoS 1) from a thread; remembers which the broker acked.

    A persistent session (fixed client id, clean session off): paho resends what the broker
    had not acknowledged after a reconnect, as a device with a real MQTT stack does.
    """

    def __init__(
        self, port: int, topic: str, *, rate: float = 500.0, qos: int = 1, **auth: Any
    ) -> None:
        self.topic = topic
        self.rate = rate
        self.qos = qos
        self._client = client(port, f"test-pub-{time.time_ns()}", clean=False, **auth)
        self._sent: list[paho.MQTTMessageInfo] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def publish(self, n: int) -> None:
        info = self._client.publish(f"{self.topic}/{n % 7}", http_json(n), qos=self.qos)
        with self._lock:
            self._sent.append(info)

    def burst(self, count: int) -> None:
        start = len(self._sent)
        for n in range(start, start + count):
            self.publish(n)

    def start(self) -> None:
        """Publish at `rate` messages a second until stop()."""

        def run() -> None:
            n = len(self._sent)
            began = time.monotonic()
            while not self._stop.is_set():
                self.publish(n)
                n += 1
                ahead = n / self.rate - (time.monotonic() - began)
                if ahead > 0:
                    time.sleep(ahead)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    @property
    def sent(self) -> int:
        with self._lock:
            return len(self._sent)

    def acked(self) -> set[str]:
        """Ids ("m<n>") of the messages the broker acknowledged (PUBACK) so far."""
        with self._lock:
            return {f"m{n}" for n, info in enumerate(self._sent) if acknowledged(info)}

    def wait_all_acked(self, timeout: float = 20.0) -> None:
        wait_until(lambda: len(self.acked()) == self.sent, "the broker's PUBACKs", timeout=timeout)

    def close(self) -> None:
        self.stop()
        self._client.disconnect()
        self._client.loop_stop()


class Watcher:
    """Subscribes to a topic filter and records (topic, payload, retain) of what arrives."""

    def __init__(self, port: int, topic: str) -> None:
        self.seen: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._client = client(port, f"test-watch-{time.time_ns()}")
        subscribed = threading.Event()
        self._client.on_subscribe = lambda *a: subscribed.set()
        self._client.on_message = self._record
        self._client.subscribe(topic, 1)
        if not subscribed.wait(5):
            raise TimeoutError(f"no SUBACK for {topic}")

    def _record(self, c: Any, userdata: Any, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.seen.append((message.topic, bytes(message.payload), bool(message.retain)))

    def payloads(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p, _ in self.seen if t == topic]

    def wait_for(self, topic: str, payload: bytes, timeout: float = 10.0) -> None:
        wait_until(
            lambda: bool(self.payloads(topic)) and self.payloads(topic)[-1] == payload,
            f"{payload!r} on {topic}",
            timeout=timeout,
        )

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@contextlib.contextmanager
def watching(port: int, topic: str) -> Iterator[Watcher]:
    watcher = Watcher(port, topic)
    try:
        yield watcher
    finally:
        watcher.close()


def retained(port: int, topic: str, timeout: float = 3.0) -> bytes | None:
    """The retained message on `topic` now, as a new subscriber gets it."""
    with watching(port, topic) as watcher:
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: bool(watcher.payloads(topic)), "a retained message", timeout=timeout)
        found = [p for t, p, r in watcher.seen if t == topic and r]
    return found[-1] if found else None
