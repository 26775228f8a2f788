"""Runs a fleet of simulated devices against a running fieldbridge until the time is up."""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Protocol

import httpx

from fieldbridge.simulate import efento, smartcitizen, trapnet
from fieldbridge.simulate.efento import CoapLink, EfentoDevice, EfentoSensor
from fieldbridge.simulate.mqtt import MqttLink
from fieldbridge.simulate.pacing import Pacer, period_for
from fieldbridge.simulate.tally import SendFailed, Tally
from fieldbridge.simulate.targets import MqttTarget, Targets

KINDS = ("efento", "smartcitizen", "trapnet")
GRACE = 5.0  # seconds sends in flight may finish after the end, before they are abandoned
HEALTH_TIMEOUT = 5.0


class Unreachable(Exception):
    """fieldbridge, or the source a kind sends to, does not answer; the text names it."""


@dataclass(frozen=True, slots=True)
class Plan:
    """What to simulate: devices of each kind, for how long, how fast, from which seed."""

    efento: int = 3
    smartcitizen: int = 2
    trapnet: int = 3  # trap nodes; a gateway is added for every four
    duration: float | None = 120.0  # seconds; None: until stopped
    rate: float = 1.0  # messages a second, all devices together
    seed: int = 1

    def count(self, kind: str) -> int:
        return int(getattr(self, kind))

    @property
    def gateways(self) -> int:
        return math.ceil(self.trapnet / trapnet.NODES_PER_GATEWAY)


class Device(Protocol):
    """A simulated device: one transmission per turn, a turn every period()."""

    kind: str

    @property
    def id(self) -> str: ...

    def period(self) -> float: ...

    async def turn(self) -> None: ...


class Fleet:
    """The devices of a plan on their targets: `tallies` count what each kind sent."""

    def __init__(self, plan: Plan, targets: Targets) -> None:
        self.plan = plan
        self.targets = targets
        self.tallies = {
            kind: Tally(kind) for kind in KINDS if plan.count(kind) and _target(targets, kind)
        }
        self.started_at: float | None = None  # time.monotonic() when the devices started

    @property
    def deadline(self) -> float | None:
        if self.started_at is None or self.plan.duration is None:
            return None
        return self.started_at + self.plan.duration

    async def run(self, stop: asyncio.Event) -> dict[str, Tally]:
        """Check fieldbridge answers (Unreachable if not), then send until the duration is
        over or `stop` is set; sends in flight then get GRACE seconds to finish."""
        await self._check_http()
        async with AsyncExitStack() as stack:
            devices = await self._devices(stack)
            self.started_at = time.monotonic()
            rng = random.Random(f"{self.plan.seed}/pacing")
            pacer = Pacer(rng, stop, self.deadline)
            tasks = [
                asyncio.create_task(pacer.run(d.period, d.turn), name=f"simulate-{d.id}")
                for d in devices
            ]
            try:
                await _until_done(tasks, stop, self.deadline)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        return self.tallies

    async def _check_http(self) -> None:
        url = self.targets.http
        if url is None:
            return
        try:
            # Only whether the service answers (any status): nothing is sent but the request,
            # so a self-signed certificate on this machine's server is no reason to stop.
            async with httpx.AsyncClient(timeout=HEALTH_TIMEOUT, verify=False) as client:
                await client.get(f"{url}/healthz")
        except httpx.HTTPError as exc:
            raise Unreachable(
                f"fieldbridge is not running at {url} ({type(exc).__name__}); start it with "
                "`make run` (or `fieldbridge run` with the same --config), or give --http URL "
                "of the running service"
            ) from None

    async def _devices(self, stack: AsyncExitStack) -> list[Device]:
        plan, targets = self.plan, self.targets
        total = sum(plan.count(k) for k in self.tallies) + (
            plan.gateways if "trapnet" in self.tallies else 0
        )
        period = period_for(total, plan.rate)
        devices: list[Device] = []
        links: dict[tuple[str, int, str | None], MqttLink] = {}

        async def broker(target: MqttTarget) -> Callable[[str, bytes], Awaitable[None]]:
            key = (target.host, target.port, target.username)
            if key not in links:
                link = MqttLink(
                    target.host,
                    target.port,
                    client_id=f"fieldbridge-simulate-{os.getpid()}-{len(links)}",
                    tls=target.tls,
                    username=target.username,
                    password=target.password,
                )
                try:
                    links[key] = await stack.enter_async_context(link)
                except SendFailed as exc:
                    raise Unreachable(
                        f"{exc}; is fieldbridge running? (`make run` starts a broker on "
                        "127.0.0.1:1883 when none answers there; else give --mqtt HOST:PORT)"
                    ) from None
            return links[key].publish

        if "efento" in self.tallies and targets.efento is not None:
            target = targets.efento
            link = CoapLink(
                target.host,
                target.port,
                prefix=target.prefix,
                token_option=target.token_option,
                token=target.token,
            )
            await stack.enter_async_context(link)
            try:
                await link.clock()
            except SendFailed as exc:
                raise Unreachable(f"no Efento CoAP source answers: {exc}") from None
            tally = self.tallies["efento"]
            for index in range(plan.efento):
                sensor = EfentoSensor(
                    efento.serial_for(plan.seed, index),
                    efento.MODELS[index % len(efento.MODELS)],
                    _rng(plan.seed, "efento", index),
                    measure_every=max(1, int(period / 3)),
                    transmit_every=period,
                    token=target.token if target.token_option is None else None,
                )
                tally.devices.append(sensor.id)
                devices.append(EfentoDevice(sensor, link, tally))

        if "smartcitizen" in self.tallies and targets.smartcitizen is not None:
            publish = await broker(targets.smartcitizen)
            tally = self.tallies["smartcitizen"]
            for index in range(plan.smartcitizen):
                kit = smartcitizen.Kit(
                    smartcitizen.token_for(plan.seed, index), _rng(plan.seed, "sck", index)
                )
                tally.devices.append(kit.token)
                devices.append(smartcitizen.KitDevice(kit, publish, tally, period))

        if "trapnet" in self.tallies and targets.trapnet is not None:
            publish = await broker(targets.trapnet)
            prefix = targets.trapnet.prefix
            tally = self.tallies["trapnet"]
            gateway_ids = trapnet.unique(
                [trapnet.gateway_id(plan.seed, i) for i in range(plan.gateways)]
            )
            gateways = [
                trapnet.Gateway(g, _rng(plan.seed, "gateway", i)) for i, g in enumerate(gateway_ids)
            ]
            node_ids = trapnet.unique([trapnet.node_id(plan.seed, i) for i in range(plan.trapnet)])
            for index, node in enumerate(node_ids):
                gateway = gateways[index // trapnet.NODES_PER_GATEWAY]
                sim = trapnet.TrapNode(
                    node, gateway, f"T{1000 + index}", _rng(plan.seed, "node", index)
                )
                devices.append(trapnet.TrapNodeDevice(sim, prefix, publish, tally, period))
            for gateway in gateways:
                # Gateways report less often than their nodes, but first: they start earlier.
                devices.insert(
                    0, trapnet.GatewayDevice(gateway, prefix, publish, tally, period * 3)
                )
            tally.devices.extend([*gateway_ids, *node_ids])
        return devices


def _target(targets: Targets, kind: str) -> object:
    return getattr(targets, kind)


def _rng(seed: int, kind: str, index: int) -> random.Random:
    return random.Random(f"{seed}/{kind}/{index}/values")


async def _until_done(
    tasks: list[asyncio.Task[None]], stop: asyncio.Event, deadline: float | None
) -> None:
    """Wait for the devices to finish (each does at the deadline or on stop), then give the
    sends in flight at most GRACE seconds; a device that failed raises its error here."""
    everyone = asyncio.ensure_future(asyncio.wait(tasks))
    stopping = asyncio.ensure_future(stop.wait())
    try:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        await asyncio.wait([everyone, stopping], timeout=wait, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.wait(tasks, timeout=GRACE)
    finally:
        everyone.cancel()
        stopping.cancel()
    for task in tasks:
        if task.done() and not task.cancelled():
            error = task.exception()
            if error is not None:
                raise error  # a bug in a device: a failed send is counted, not raised
