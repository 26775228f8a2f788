"""A Smart Citizen Kit simulator: publishes hello, info, readings and raw readings like a kit.

Follows seed 003 and shared/specs/integrations.md section 6.1: topics device/sck/<token>/...,
QoS 1, readings as {"data": [{"recorded_at", "sensors": [{"id", "value"}]}]} or the raw form
{t:<time>,<id>:<value>,...}. Usable from tests and by hand:

    .venv/bin/python -m tests.support.smartcitizen_sim --token abc123 --readings 5
"""

from __future__ import annotations

import argparse
import random
import time
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from fieldbridge.simulate.smartcitizen import INFO  # what an SCK 2.1 says of itself

PUBLISH_TIMEOUT = 10.0
# What an SCK 2.1 with a PM sensor sends (ids of the firmware's sensor table): battery, light,
# temperature, humidity, noise dBA, pressure, PM 1 / 2.5 / 10.
SCK21 = {10: (20, 100), 14: (0, 900), 55: (5, 35), 56: (20, 90), 53: (30, 80), 58: (98, 103)}
SCK21_PM = {89: (0, 30), 87: (0, 50), 88: (0, 80)}


def kit_time(ts: float) -> str:
    """The kit's clock as it writes recorded_at: UTC, whole seconds, with a Z."""
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Kit:
    """One simulated kit connected to a broker; every publish waits for the broker's PUBACK."""

    def __init__(
        self,
        token: str,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        seed: int | None = None,
        sensors: dict[int, tuple[float, float]] | None = None,
    ) -> None:
        self.token = token
        self.sensors = sensors if sensors is not None else {**SCK21, **SCK21_PM}
        self._random = random.Random(seed)
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"sck-sim-{token}-{self._random.random():.6f}"
        )
        self._host = host
        self._port = port

    def __enter__(self) -> Kit:
        self._client.connect(self._host, self._port, keepalive=30)
        self._client.loop_start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def topic(self, what: str) -> str:
        return f"device/sck/{self.token}/{what}"

    def publish(self, what: str, payload: bytes) -> None:
        info = self._client.publish(self.topic(what), payload, qos=1)
        info.wait_for_publish(PUBLISH_TIMEOUT)
        if not info.is_published():
            raise TimeoutError(f"the broker did not PUBACK {self.topic(what)}")

    def hello(self) -> None:
        """The kit says hello with its token, as kits do while onboarding."""
        self.publish("hello", self.token.encode())

    def info(self, **extra: Any) -> dict[str, Any]:
        body = {**INFO, **extra}
        self.publish("info", orjson.dumps(body))
        return body

    def sample(self) -> dict[int, float]:
        return {
            sid: round(self._random.uniform(low, high), 2)
            for sid, (low, high) in self.sensors.items()
        }

    def readings(self, times: list[float]) -> bytes:
        """One JSON readings message with one item per time (a kit catching up after being
        offline sends several); returns the payload for checks and redelivery."""
        data = [
            {
                "recorded_at": kit_time(ts),
                "sensors": [{"id": sid, "value": v} for sid, v in self.sample().items()],
            }
            for ts in times
        ]
        payload = orjson.dumps({"data": data})
        self.publish("readings", payload)
        return payload

    def raw(self, ts: float) -> bytes:
        """One raw readings message: {t:<time>,<id>:<value>,...}."""
        pairs = ",".join(f"{sid}:{v}" for sid, v in self.sample().items())
        payload = f"{{t:{kit_time(ts)},{pairs}}}".encode()
        self.publish("readings/raw", payload)
        return payload


def main() -> None:
    parser = argparse.ArgumentParser(description="Publish like a Smart Citizen Kit.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--token", default="sim001")
    parser.add_argument("--readings", type=int, default=3, help="readings messages to send")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between them")
    parser.add_argument("--raw", action="store_true", help="send the raw form instead of JSON")
    args = parser.parse_args()
    with Kit(args.token, args.host, args.port) as kit:
        kit.hello()
        kit.info()
        for n in range(args.readings):
            now = time.time()
            sent = kit.raw(now) if args.raw else kit.readings([now])
            print(f"{kit.topic('readings/raw' if args.raw else 'readings')} {sent.decode()}")
            if n + 1 < args.readings:
                time.sleep(args.interval)


if __name__ == "__main__":
    main()
