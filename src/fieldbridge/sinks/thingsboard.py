"""ThingsBoard sink: telemetry over the gateway MQTT API, the device MQTT API or HTTP (spec §3)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import httpx

from fieldbridge.errors import (
    PermanentDeliveryError,
    RetryableDeliveryError,
    StoreError,
)
from fieldbridge.model import Device, JournalEntry
from fieldbridge.plugin import SinkType, register_sink
from fieldbridge.sinks.base import Destination
from fieldbridge.sinks.http_client import sink_client
from fieldbridge.sinks.thingsboard_device import (
    DeviceTransport,
    HttpDevices,
    MqttDevices,
    by_device,
    token_of,
)
from fieldbridge.sinks.thingsboard_gateway import GatewayLink
from fieldbridge.sinks.thingsboard_settings import ThingsBoardSettings
from fieldbridge.store import Store


class ThingsBoardDestination(Destination):
    """Sends batches in the configured mode; `transport` replaces httpx's (http mode)."""

    def __init__(
        self, settings: ThingsBoardSettings, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.settings = settings
        self._what = f"thingsboard {settings.name}"
        self._transport = transport
        self._store: Store | None = None
        self._gateway: GatewayLink | None = None
        self._devices: DeviceTransport | None = None
        # Messages of a batch already delivered when another device's failed: the engine
        # resends parts of that batch (retry, bisection) and these are skipped.
        self._delivered: set[int] = set()

    def bind(self, store: Store) -> None:
        self._store = store

    async def __aenter__(self) -> ThingsBoardDestination:
        mode = self.settings.mode
        if mode == "gateway":
            self._gateway = GatewayLink(self.settings)
        elif mode == "device":
            self._devices = MqttDevices(self.settings)
        else:
            self._devices = HttpDevices(
                self.settings, sink_client(self.settings, {}, transport=self._transport)
            )
        self._delivered.clear()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._gateway is not None:
            self._gateway.close()
            self._gateway = None
        if self._devices is not None:
            await self._devices.close()
            self._devices = None

    async def send(self, entries: Sequence[JournalEntry]) -> None:
        if self._gateway is not None:
            registry = await self._registry({e.device for e in entries})
            await self._gateway.send(entries, {d: self._attributes(d, registry) for d in registry})
            return
        await self._send_per_device(entries)

    async def _send_per_device(self, entries: Sequence[JournalEntry]) -> None:
        transport = self._devices
        assert transport is not None, "use the destination inside `async with`"
        if not any(e.id in self._delivered for e in entries):
            self._delivered.clear()  # a new batch, not a part of the one that failed
        todo = by_device([e for e in entries if e.id not in self._delivered])
        registry = await self._registry(set(todo), always=True)
        refused: PermanentDeliveryError | None = None
        retry: RetryableDeliveryError | None = None
        groups = list(todo.items())
        step = self.settings.max_connections
        for start in range(0, len(groups), step):
            part = groups[start : start + step]
            if isinstance(transport, MqttDevices):
                for device, _ in part:
                    transport.touch(device, self._token(device, registry) or "")
            results = await asyncio.gather(
                *(self._one(transport, d, group, registry) for d, group in part),
                return_exceptions=True,
            )
            for (_, group), result in zip(part, results, strict=True):
                if isinstance(result, PermanentDeliveryError):
                    refused = refused or result
                elif isinstance(result, RetryableDeliveryError):
                    retry = retry or result
                elif isinstance(result, BaseException):
                    raise result
                else:
                    self._delivered.update(e.id for e in group)
        if retry is not None:
            raise retry
        if refused is not None:
            raise refused
        self._delivered.difference_update(e.id for e in entries)

    async def _one(
        self,
        transport: DeviceTransport,
        device: str,
        group: list[JournalEntry],
        registry: dict[str, Device],
    ) -> None:
        token = self._token(device, registry)
        if token is None:
            attr = self.settings.token_attribute
            reason = (
                f"{self._what}: device {device} has no {attr} attribute; set it with "
                f"`fieldbridge devices set {device} --attr {attr}=TOKEN`, then retry its "
                "dead letters"
            )
            raise PermanentDeliveryError(reason, body=reason)
        await transport.send(device, token, group, self._attributes(device, registry))

    def _token(self, device: str, registry: dict[str, Device]) -> str | None:
        known = registry.get(device)
        return None if known is None else token_of(known.attributes, self.settings.token_attribute)

    def _attributes(self, device: str, registry: dict[str, Device]) -> dict[str, Any]:
        known = registry.get(device)
        if known is None:
            return {}
        return {k: known.attributes[k] for k in self.settings.attributes if k in known.attributes}

    async def _registry(self, devices: set[str], *, always: bool = False) -> dict[str, Device]:
        """The devices' registry entries, when tokens or attributes are needed."""
        if not (always or self.settings.attributes):
            return {}
        assert self._store is not None, "the sink runner binds the destination to the store"
        out: dict[str, Device] = {}
        try:
            for device in sorted(devices):
                known = await self._store.get_device(device)
                if known is not None:
                    out[device] = known
        except StoreError as exc:
            raise RetryableDeliveryError(
                f"{self._what}: cannot read the device registry: {exc}"
            ) from exc
        return out


register_sink("thingsboard", SinkType(ThingsBoardSettings, ThingsBoardDestination))
