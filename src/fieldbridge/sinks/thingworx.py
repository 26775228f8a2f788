"""ThingWorx sink: calls a ThingWorx service per Efento frame, as the seed server did (spec §5)."""

from __future__ import annotations

import logging
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import AnyHttpUrl, Field, SecretStr, field_validator

from fieldbridge.codecs import efento
from fieldbridge.errors import (
    DecodeError,
    PermanentDeliveryError,
    RetryableDeliveryError,
    StoreError,
)
from fieldbridge.model import JournalEntry
from fieldbridge.plugin import RouteSettings, SinkType, register_sink
from fieldbridge.sinks.http_client import HttpDestination, HttpSinkSettings, sink_client
from fieldbridge.sinks.http_errors import check_response, transport_failure
from fieldbridge.sinks.thingworx_calls import (
    MEASUREMENT,
    remote_configuration,
    render_call,
)
from fieldbridge.store import Store

log = logging.getLogger("fieldbridge.sinks.thingworx")

ORIGIN = "thingworx"  # the origin of the downlinks this sink queues


class ThingWorxSettings(HttpSinkSettings):
    """[[sinks.thingworx]]"""

    url: AnyHttpUrl  # the server's base URL; /Thingworx/Things/... is appended
    app_key: SecretStr = Field(min_length=1)
    thing: str = Field(min_length=1)  # Thing name; "{device}" becomes the sensor's serial
    measurement_service: str = Field(default="SendMeasurement", min_length=1)
    configuration_service: str = Field(default="CheckConfig", min_length=1)
    device_info_service: str = Field(default="SendInfoDevice", min_length=1)
    # Only Efento frames can be rendered for the Efento services.
    route: RouteSettings = Field(default_factory=lambda: RouteSettings(kinds=[efento.KIND]))

    @field_validator("url")
    @classmethod
    def _base_url(cls, url: AnyHttpUrl) -> AnyHttpUrl:
        path = (url.path or "").rstrip("/")
        if path.lower().endswith("/thingworx"):
            raise ValueError(
                f"give the server's base URL without /Thingworx (e.g. "
                f"{url.scheme}://{url.host}{'' if url.port is None else f':{url.port}'}); "
                "fieldbridge appends /Thingworx/Things/<thing>/Services/<service>"
            )
        if url.query or url.fragment:
            raise ValueError("must have no query or fragment; the appKey goes in a header")
        return url

    @field_validator("thing")
    @classmethod
    def _thing_template(cls, thing: str) -> str:
        try:
            names = {f for _, f, _, _ in string.Formatter().parse(thing) if f is not None}
        except ValueError as exc:
            raise ValueError(f"{thing!r} is not a valid name template: {exc}") from None
        if names - {"device"}:
            raise ValueError(
                f"{thing!r}: only {{device}} (the sensor's serial) can be replaced; "
                "write a literal brace as {{ or }}"
            )
        try:
            rendered = thing.format(device="282C024156AF")
        except ValueError as exc:
            raise ValueError(f"{thing!r} is not a valid name template: {exc}") from None
        if not rendered.strip():
            raise ValueError(f"{thing!r} renders to an empty Thing name")
        return thing


@dataclass(frozen=True, slots=True)
class _Downlink:
    """A downlink a RemoteConfiguration asked for, kept until the store took it."""

    device: str
    payload: bytes
    fields: dict[str, Any]  # as RemoteConfiguration named them
    expect_hash_change: bool
    meta: dict[str, Any]  # which sink and message asked for it


class ThingWorxDestination(HttpDestination):
    """One service call per frame, in journal order; a failure stops the batch there.

    `transport` replaces httpx's network transport (see sink_client).
    """

    wants_payload = True

    def __init__(
        self, settings: ThingWorxSettings, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.settings = settings
        self._transport = transport
        self._base = str(settings.url).rstrip("/")
        self._services = {
            "m": settings.measurement_service,
            "c": settings.configuration_service,
            "i": settings.device_info_service,
        }
        self._client: httpx.AsyncClient | None = None
        self._store: Store | None = None
        # ThingWorx services take no idempotency key, so a retried batch would call them again
        # for frames they already took. These ids were delivered in a batch that then failed;
        # the engine resends a subset of that batch (retry, bisection), and they are skipped.
        self._delivered: set[int] = set()
        # Downlinks ThingWorx asked for that the store could not take yet, by message id: the
        # retry queues them without calling ThingWorx again.
        self._unqueued: dict[int, _Downlink] = {}

    def bind(self, store: Store) -> None:
        self._store = store

    async def __aenter__(self) -> ThingWorxDestination:
        headers = {"appKey": self.settings.app_key.get_secret_value(), "Accept": "application/json"}
        self._client = sink_client(self.settings, headers, transport=self._transport)
        self._delivered.clear()
        return self

    def service_url(self, device: str, service: str) -> str:
        thing = quote(self.settings.thing.format(device=device), safe="")
        return f"{self._base}/Thingworx/Things/{thing}/Services/{quote(service, safe='')}"

    async def send(self, entries: Sequence[JournalEntry]) -> None:
        if not any(e.id in self._delivered for e in entries):
            self._delivered.clear()  # a new batch, not a retry of the one that failed
        for entry in entries:
            if entry.id in self._delivered:
                continue
            downlink = self._unqueued.get(entry.id)
            if downlink is None:
                downlink = await self._call(entry)
            if downlink is not None:
                await self._queue(entry.id, downlink)
            self._delivered.add(entry.id)
        self._delivered.difference_update(e.id for e in entries)

    async def _call(self, entry: JournalEntry) -> _Downlink | None:
        """Deliver one frame; return the downlink its answer asks for, if any."""
        assert self._client is not None, "use the destination inside `async with`"
        try:
            call = render_call(entry)
        except DecodeError as exc:
            reason = (
                f"message {entry.id} (kind {entry.kind!r}) is not an Efento frame the ThingWorx "
                f'services take: {exc}; keep route.kinds = ["efento"]'
            )
            raise PermanentDeliveryError(reason, body=reason) from exc
        if call is None:
            log.debug(
                "thingworx %s: message %d is part of a configuration", self.settings.name, entry.id
            )
            return None
        service = self._services[call.endpoint]
        what = f"thingworx {self.settings.name} ({service}, message {entry.id})"
        try:
            response = await self._client.post(
                self.service_url(entry.device, service),
                content=call.body,
                headers={"Content-Type": "application/json"},
            )
        except httpx.TransportError as exc:
            raise transport_failure(exc, what) from exc
        check_response(response, what)
        if call.role != MEASUREMENT:
            return None
        return self._downlink(entry, response)

    def _downlink(self, entry: JournalEntry, response: httpx.Response) -> _Downlink | None:
        fields = remote_configuration(response.content)
        if fields is None:
            return None
        try:
            payload = efento.encode_config(fields)
        except ValueError as exc:
            # The frame was delivered; a bad answer must not resend it. Nothing is applied.
            log.warning(
                "thingworx %s: RemoteConfiguration for %s (message %d) ignored: %s",
                self.settings.name,
                entry.device,
                entry.id,
                exc,
            )
            return None
        return _Downlink(
            entry.device,
            payload,
            fields,
            # Requests alone (send /i, send /c, ...) leave the configuration hash as it is.
            efento.changes_configuration(payload),
            {"sink": self.settings.name, "message_id": entry.id},
        )

    async def _queue(self, message_id: int, downlink: _Downlink) -> None:
        assert self._store is not None, "the sink runner binds the destination to the store"
        try:
            if await self._already_queued(downlink):
                log.info(
                    "thingworx %s: the same configuration is already queued for %s",
                    self.settings.name,
                    downlink.device,
                )
            else:
                downlink_id = await self._store.queue_downlink(
                    downlink.device,
                    downlink.payload,
                    origin=ORIGIN,
                    fields=downlink.fields,
                    expect_hash_change=downlink.expect_hash_change,
                    meta=downlink.meta,
                )
                log.info(
                    "thingworx %s: RemoteConfiguration for %s queued as downlink %d (%s)",
                    self.settings.name,
                    downlink.device,
                    downlink_id,
                    ", ".join(downlink.fields),
                )
        except StoreError as exc:
            self._unqueued[message_id] = downlink
            raise RetryableDeliveryError(
                f"thingworx {self.settings.name}: could not queue the RemoteConfiguration "
                f"for {downlink.device} (message {message_id}): {exc}"
            ) from exc
        self._unqueued.pop(message_id, None)

    async def _already_queued(self, downlink: _Downlink) -> bool:
        """ThingWorx may ask for the same change on every frame until the sensor applied it."""
        assert self._store is not None
        pending = await self._store.pending_downlinks(downlink.device)
        return any(d.payload == downlink.payload for d in pending)


register_sink("thingworx", SinkType(ThingWorxSettings, ThingWorxDestination))
