"""Simulated Smart Citizen Kits publishing on device/sck/<token>/... as the kit firmware does.

A kit says hello and sends its hardware info once connected, then one readings message per
turn (seed 003: {"data": [{"recorded_at", "sensors": [{"id", "value"}]}]}, QoS 1) with the
sensors of an SCK 2.1 with a PM sensor: battery, light, temperature, humidity, noise, pressure,
PM 1 / 2.5 / 10 (ids of the firmware's sensor table, as codecs/smartcitizen/sensors.json names
them). Readings not acknowledged are sent again with the next ones, as a kit catching up does.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from fieldbridge.simulate.drift import Battery, Drift
from fieldbridge.simulate.tally import Tally

KIND = "smartcitizen"
BATTERY, LIGHT, NOISE, TEMPERATURE, HUMIDITY, PRESSURE = 10, 14, 53, 55, 56, 58
PM_1, PM_2_5, PM_10 = 89, 87, 88
MAX_HELD = 100  # readings items kept while the broker does not acknowledge
INFO = {
    "hw_ver": "2.1",
    "sam_ver": "0.9.8-ce87e64",
    "sam_bd": "2021-03-01T10:00:00Z",
    "esp_ver": "0.9.8-ce87e64",
    "esp_bd": "2021-03-01T10:00:00Z",
}

Publish = Callable[[str, bytes], Awaitable[None]]
"""(topic, payload) -> returns at the PUBACK, or raises SendFailed."""


def token_for(seed: int, index: int) -> str:
    """Kit `index`'s token: six hex digits, as the platform issues them, from the seed."""
    return random.Random(f"{seed}/smartcitizen/{index}").randbytes(3).hex()


def kit_time(at: float) -> str:
    """recorded_at as the kit writes it: UTC, whole seconds, with a Z."""
    return datetime.fromtimestamp(int(at), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Kit:
    """One kit: its sensors' values and the messages it publishes."""

    def __init__(self, token: str, rng: random.Random) -> None:
        self.token = token
        self._rng = rng
        self.battery = Battery(rng, full=100.0, empty=0.0)
        self._drifts = {
            TEMPERATURE: Drift(
                rng, centre=rng.uniform(14, 22), swing=4, wander=2, noise=0.1, low=-20, high=50,
                digits=2,
            ),
            HUMIDITY: Drift(
                rng, centre=rng.uniform(45, 70), swing=-10, wander=6, noise=0.5, low=5,
                high=100, digits=2,
            ),
            PRESSURE: Drift(
                rng, centre=rng.uniform(100.5, 102.2), swing=0.08, wander=0.4, noise=0.005,
                low=95, high=105, digits=2,
            ),
            NOISE: Drift(
                rng, centre=rng.uniform(45, 60), swing=8, wander=5, noise=3, low=30, high=100,
                digits=2,
            ),
            LIGHT: Drift(
                rng, centre=250, swing=450, wander=80, noise=10, low=0, high=2000, digits=0
            ),
            PM_2_5: Drift(
                rng, centre=rng.uniform(5, 15), swing=3, wander=4, noise=0.8, low=0, high=300,
                digits=0,
            ),
        }  # fmt: skip
        self._held: list[dict[str, Any]] = []

    def topic(self, what: str) -> str:
        return f"device/sck/{self.token}/{what}"

    def sample(self, at: float) -> list[dict[str, float]]:
        values = {sid: drift.value(at) for sid, drift in self._drifts.items()}
        pm = values[PM_2_5]
        values[PM_1] = round(pm * 0.7)
        values[PM_10] = round(pm * 1.4 + self._rng.uniform(0, 3))
        values[BATTERY] = self.battery.percent
        return [{"id": sid, "value": value} for sid, value in sorted(values.items())]

    def readings(self, now: float) -> bytes:
        """A readings message: this turn's item after any not yet acknowledged."""
        self._held.append({"recorded_at": kit_time(now), "sensors": self.sample(now)})
        del self._held[:-MAX_HELD]
        return orjson.dumps({"data": self._held})

    def acknowledged(self) -> None:
        self._held.clear()
        self.battery.drain(0.0002)

    def info(self) -> bytes:
        return orjson.dumps(INFO)


class KitDevice:
    """A kit on its broker: hello and info first, then readings each turn."""

    kind = KIND

    def __init__(self, kit: Kit, publish: Publish, tally: Tally, period: float) -> None:
        self.kit = kit
        self._publish = publish
        self.tally = tally
        self._period = period
        self._introduced = False

    @property
    def id(self) -> str:
        return self.kit.token

    def period(self) -> float:
        return self._period

    async def turn(self) -> None:
        if not self._introduced:
            hello = await self.tally.delivered(self._send("hello", self.kit.token.encode()))
            info = await self.tally.delivered(self._send("info", self.kit.info()))
            self._introduced = hello and info
        if await self.tally.delivered(self._send("readings", self.kit.readings(time.time()))):
            self.kit.acknowledged()

    def _send(self, what: str, payload: bytes) -> Awaitable[None]:
        return self._publish(self.kit.topic(what), payload)
