"""DUNE DB sink: each message of a configured device becomes one action on its component."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from fieldbridge.clients.dunedb import AsyncDuneDB, DuneEnvironment
from fieldbridge.errors import (
    ApiError,
    AuthError,
    ConfigError,
    NotFound,
    PermanentDeliveryError,
    PermissionDenied,
    RetryableDeliveryError,
    StoreError,
)
from fieldbridge.model import DuneActionState, JournalEntry, Reading
from fieldbridge.plugin import SinkSettings, SinkType, register_sink
from fieldbridge.sinks.base import Destination
from fieldbridge.timefmt import iso

if TYPE_CHECKING:
    from fieldbridge.store import Store

log = logging.getLogger("fieldbridge.sinks")

NO_READINGS = "no_mapped_readings"  # skip reason: the message carries none of the mapped values


class DuneDeviceSettings(BaseModel):
    """[sinks.dunedb.devices.<device id>]: where a device's messages go, and how."""

    model_config = ConfigDict(extra="forbid")

    component: str = Field(min_length=1)  # the component's UUID, full or short
    action_form: str = Field(min_length=1)  # the action's type form ID
    # Action data field -> reading quantity; empty: every reading, named by its quantity.
    fields: dict[str, str] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)  # fields every action of it carries
    time_field: str | None = None  # a data field for the readings' time (ISO 8601 UTC)


class DuneDBSinkSettings(SinkSettings):
    """[[sinks.dunedb]]"""

    environment: str = Field(min_length=1)  # [dunedb.environments.<environment>]
    devices: dict[str, DuneDeviceSettings] = Field(min_length=1)
    timeout: float = Field(default=60.0, gt=0)  # seconds for each call to the DB or Auth0

    _connection: DuneEnvironment | None = PrivateAttr(default=None)

    def resolve(self, sections: Mapping[str, Any]) -> list[str]:
        dunedb = sections.get("dunedb")
        environments = getattr(dunedb, "environments", {})
        found = environments.get(self.environment)
        if found is None:
            known = ", ".join(sorted(environments)) or "none"
            return [
                f"environment {self.environment!r} is not in [dunedb.environments] (known: "
                f"{known}); add [dunedb.environments.{self.environment}] with auth0_domain, "
                "db_domain, client_id and client_secret"
            ]
        self._connection = found
        return []

    def connection(self) -> DuneEnvironment:
        if self._connection is None:
            raise ConfigError(
                f"sinks.dunedb.{self.name}: environment {self.environment!r} was not resolved "
                "from [dunedb.environments]; load the sink through the settings"
            )
        return self._connection


def action_data(
    entry: JournalEntry, device: DuneDeviceSettings
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The data fields of a message's action, and the readings they carry (empty: none of
    the mapped readings is in the message)."""
    wanted = device.fields or {r.quantity: r.quantity for r in entry.readings}
    by_quantity: dict[str, Reading] = {}
    for reading in entry.readings:
        if reading.value is not None:
            by_quantity.setdefault(reading.quantity, reading)
    data: dict[str, Any] = {}
    carried: list[dict[str, Any]] = []
    for field, quantity in wanted.items():
        found = by_quantity.get(quantity)
        if found is None:
            continue
        data[field] = found.value
        carried.append(
            {
                "quantity": found.quantity,
                "value": found.value,
                "unit": found.unit,
                "measured_at": iso(found.measured_at),
                "field": field,
            }
        )
    if not carried:
        return {}, []
    if device.time_field:
        data[device.time_field] = carried[0]["measured_at"]
    return {**device.data, **data}, carried


class DuneDBDestination(Destination):
    """One action per message: recorded as intended, POSTed, then recorded as created.

    A message whose action is recorded as created is never sent again (a replay, a restart).
    The DB has no idempotency key: a POST the DB carried out whose answer never came (a
    timeout), or a stop between the answer and the record, is sent again and can create one
    duplicate; `attempts` in the record counts the POSTs that may have reached the DB.
    """

    def __init__(
        self,
        settings: DuneDBSinkSettings,
        transport: httpx.AsyncBaseTransport | None = None,
        token_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self._transport = transport
        self._token_transport = token_transport
        self._store: Store | None = None
        self._db: AsyncDuneDB | None = None
        self._components: dict[str, uuid.UUID] = {}
        self._unconfirmed: dict[int, str] = {}  # created, but the record could not be written

    def bind(self, store: Store) -> None:
        self._store = store

    def takes(self, entry: JournalEntry) -> bool:
        return entry.device in self.settings.devices

    def skip_reason(self, entry: JournalEntry) -> str | None:
        _, carried = action_data(entry, self.settings.devices[entry.device])
        return None if carried else NO_READINGS

    def health(self) -> Mapping[str, Any] | None:
        return None if self._db is None else {"auth": self._db.auth.status().as_dict()}

    async def __aenter__(self) -> DuneDBDestination:
        name = self.settings.name
        self._db = AsyncDuneDB(
            self.settings.connection(),
            name=f"sink {name}",
            timeout=self.settings.timeout,
            keeper=self._store,
            key=f"sink:{name}",
            transport=self._transport,
            token_transport=self._token_transport,
        )
        await self._db.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._db is not None:
            await self._db.__aexit__(exc_type, exc, tb)

    async def send(self, entries: Sequence[JournalEntry]) -> None:
        assert self._db is not None and self._store is not None, "bind, then `async with`"
        done = await self._store.dune_actions(self.settings.name, [e.id for e in entries])
        for entry in entries:
            record = done.get(entry.id)
            if record is not None and record.state is DuneActionState.CREATED:
                continue  # its action exists: a replay or a restart sends nothing
            try:
                await self._one(entry)
            except StoreError as exc:  # the record is what makes it idempotent: retry later
                raise RetryableDeliveryError(
                    f"dunedb {self.settings.name}: the store failed: {exc}"
                ) from exc

    async def _one(self, entry: JournalEntry) -> None:
        assert self._db is not None and self._store is not None
        sink = self.settings.name
        created = self._unconfirmed.get(entry.id)
        if created is not None:  # made before a store failure: record it, post nothing
            await self._store.confirm_dune_action(sink, entry.id, created)
            del self._unconfirmed[entry.id]
            return
        device = self.settings.devices[entry.device]
        data, carried = action_data(entry, device)
        component = await self._component(entry.device, device)
        intent = await self._store.intend_dune_action(
            sink,
            entry.id,
            component_uuid=str(component),
            form_id=device.action_form,
            readings=carried,
        )
        if intent.state is DuneActionState.CREATED:
            return
        if intent.attempts > 1:
            log.warning(
                "sink %s: message %d: an earlier POST of its action may have reached the DUNE DB "
                "without an answer, or fieldbridge stopped before recording it; posting again "
                "(%d POSTs that may have created it)",
                sink,
                entry.id,
                intent.attempts,
            )
        try:
            action_id = await self._db.perform_action(device.action_form, component, data)
        except (ApiError, AuthError) as exc:
            if not (isinstance(exc, ApiError) and exc.unanswered):
                await self._store.release_dune_intent(sink, entry.id)  # surely not created
            raise self._delivery_error(exc) from exc
        self._unconfirmed[entry.id] = action_id
        await self._store.confirm_dune_action(sink, entry.id, action_id)
        del self._unconfirmed[entry.id]

    async def _component(self, device_id: str, device: DuneDeviceSettings) -> uuid.UUID:
        """The device's component as a full UUID (a short one is converted once, by the DB)."""
        known = self._components.get(device_id)
        if known is not None:
            return known
        assert self._db is not None
        try:
            found = await self._db.component_uuid(device.component)
        except ValueError as exc:
            raise PermanentDeliveryError(
                f"dunedb {self.settings.name}: devices.{device_id}.component: {exc}", body=str(exc)
            ) from exc
        except (ApiError, AuthError) as exc:
            raise self._delivery_error(exc) from exc
        self._components[device_id] = found
        return found

    def _delivery_error(self, exc: ApiError | AuthError) -> Exception:
        what = str(exc)  # the client's messages name the sink ("sink <name>") and the call
        if isinstance(exc, AuthError):
            status = exc.status if exc.refused else None
            return RetryableDeliveryError(what, status=status, retry_after=exc.retry_after)
        if isinstance(exc, PermissionDenied):
            # The client's permissions, fixed in Auth0, ride in the token: get a new one.
            if self._db is not None:
                self._db.auth.expire()
            return RetryableDeliveryError(what, status=403, body=exc.detail)
        if isinstance(exc, NotFound):
            return PermanentDeliveryError(what, status=404, body=exc.detail)
        status = exc.status
        if status == 500 and exc.detail.startswith("Error:"):
            # The route threw on this request (unknown form, missing field): the message's.
            return PermanentDeliveryError(what, status=500, body=exc.detail)
        if status is None or status >= 500 or status in (408, 425, 429):
            return RetryableDeliveryError(what, status=status, body=exc.detail)
        return PermanentDeliveryError(what, status=status, body=exc.detail)


register_sink("dunedb", SinkType(DuneDBSinkSettings, DuneDBDestination))
