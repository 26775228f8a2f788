"""A simulated trap network (seed 000): gateways and trap nodes publishing status, battery and
trap events on the topics the trapnet codec reads.

Gateways report on <prefix>/Network ({"Gateway", "Status", "Type", "Version", "Uptime", ...}:
role gateway). Each node reports its status through its gateway on <prefix>/Network/<node>
(VBat, RSSI, enclosure temperature, uptime; the Gateway key links the two), and trap events on
EnvironmentalServices/traps ({"NodeID", "Event", "State", "Gateway", "VBat", "TrapID"}): a
trigger (Event T, State C) when the trap springs, a heartbeat (Event H) every few turns and
when a ranger resets it (State O). Every message is JSON, so its numbers are readings without a
message type. A node reports before its first trap event: the codec registers nodes from
status, not from events (integrations.md §8.1).
"""

from __future__ import annotations

import random
import string
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from fieldbridge.simulate.drift import Battery, Drift
from fieldbridge.simulate.tally import Tally

KIND = "trapnet"
TRAP_TOPIC = "EnvironmentalServices/traps"
NODES_PER_GATEWAY = 4
HEARTBEAT_EVERY = 5  # turns
SPRING_CHANCE = 0.08  # per turn of a set trap
RESET_CHANCE = 0.25  # per turn of a sprung trap
PLACES = ("Bayfield", "Waiheke", "Hunua", "Tawharanui", "Shakespear", "Piha", "Ambury")

Publish = Callable[[str, bytes], Awaitable[None]]
"""(topic, payload) -> returns at the PUBACK, or raises SendFailed."""


def gateway_id(seed: int, index: int) -> str:
    rng = random.Random(f"{seed}/trapnet/gateway/{index}")
    return "TTGW" + "".join(rng.choice(string.ascii_uppercase) for _ in range(2))


def node_id(seed: int, index: int) -> str:
    rng = random.Random(f"{seed}/trapnet/node/{index}")
    return f"Trap{rng.randrange(100, 1000)}"


def unique(ids: list[str]) -> list[str]:
    """The ids, a repeated one suffixed -2, -3... (two draws of the seed may meet)."""
    seen: dict[str, int] = {}
    out = []
    for name in ids:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


class Site:
    """Where a device stands: near one of the seed's places around Auckland."""

    def __init__(self, rng: random.Random) -> None:
        self.place = rng.choice(PLACES)
        self.latitude = round(rng.uniform(-37.05, -36.55), 5)
        self.longitude = round(rng.uniform(174.45, 175.15), 5)


class Gateway:
    """A LoRa gateway's status message."""

    def __init__(self, gateway: str, rng: random.Random) -> None:
        self.id = gateway
        self.site = Site(rng)
        self.started_at = time.time() - rng.uniform(3600, 30 * 86400)

    def status(self, now: float) -> dict[str, Any]:
        return {
            "Gateway": self.id,
            "Status": "OK",
            "Type": "TTGW",
            "Version": "2.1",
            "Uptime": round((now - self.started_at) / 60),
            # As text: registry attributes, not readings on the gateway's charts.
            "Latitude": str(self.site.latitude),
            "Longitude": str(self.site.longitude),
            "location": self.site.place,
            "Project": "fieldbridge simulate",
        }


class TrapNode:
    """One trap node: its battery, radio, enclosure temperature and trap."""

    def __init__(self, node: str, gateway: Gateway, trap_id: str, rng: random.Random) -> None:
        self.id = node
        self.gateway = gateway
        self.trap_id = trap_id
        self._rng = rng
        self.site = Site(rng)
        self.battery = Battery(rng, full=4.2, empty=3.3)
        self.temperature = Drift(
            rng, centre=rng.uniform(11, 19), swing=4, wander=2, noise=0.1, low=-5, high=45
        )
        self.rssi = rng.randrange(-118, -70)
        self.started_at = time.time() - rng.uniform(600, 7 * 86400)
        self.sprung = False
        self.turns = 0

    def status(self, now: float) -> dict[str, Any]:
        self.rssi = max(-125, min(-60, self.rssi + self._rng.randint(-3, 3)))
        return {
            "NodeID": self.id,
            "Gateway": self.gateway.id,
            "Status": "OK",
            "Type": "TrapNode",
            "Version": "1.4",
            "Uptime": round((now - self.started_at) / 60),
            "VBat": self.battery.volts,
            "RSSI": self.rssi,
            "Temperature": self.temperature.value(now),
            "Latitude": str(self.site.latitude),
            "Longitude": str(self.site.longitude),
            "location": self.site.place,
            "TrapID": self.trap_id,
        }

    def event(self) -> dict[str, Any] | None:
        """This turn's trap event, if any: a trigger, a reset, or the periodic heartbeat."""
        self.turns += 1
        if not self.sprung and self._rng.random() < SPRING_CHANCE:
            self.sprung = True
            kind = "T"
        elif self.sprung and self._rng.random() < RESET_CHANCE:
            self.sprung = False
            kind = "H"
        elif self.turns % HEARTBEAT_EVERY == 0:
            kind = "H"
        else:
            return None
        return {
            "NodeID": self.id,
            "Event": kind,
            "State": "C" if self.sprung else "O",
            "Gateway": self.gateway.id,
            "VBat": self.battery.volts,
            "TrapID": self.trap_id,
        }


class GatewayDevice:
    kind = KIND

    def __init__(
        self, gateway: Gateway, prefix: str, publish: Publish, tally: Tally, period: float
    ) -> None:
        self.gateway = gateway
        self._topic = f"{prefix}/Network"
        self._publish = publish
        self.tally = tally
        self._period = period

    @property
    def id(self) -> str:
        return self.gateway.id

    def period(self) -> float:
        return self._period

    async def turn(self) -> None:
        body = orjson.dumps(self.gateway.status(time.time()))
        await self.tally.delivered(self._publish(self._topic, body))


class TrapNodeDevice:
    kind = KIND

    def __init__(
        self, node: TrapNode, prefix: str, publish: Publish, tally: Tally, period: float
    ) -> None:
        self.node = node
        self._topic = f"{prefix}/Network/{node.id}"
        self._publish = publish
        self.tally = tally
        self._period = period
        self._known = False  # its status reached fieldbridge, so events find the node

    @property
    def id(self) -> str:
        return self.node.id

    def period(self) -> float:
        return self._period

    async def turn(self) -> None:
        now = time.time()
        status = orjson.dumps(self.node.status(now))
        if await self.tally.delivered(self._publish(self._topic, status)):
            self._known = True
            self.node.battery.drain(0.0003)
        event = self.node.event()
        if event is not None and self._known:
            await self.tally.delivered(self._publish(TRAP_TOPIC, orjson.dumps(event)))
