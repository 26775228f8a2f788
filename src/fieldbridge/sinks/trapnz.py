"""Trap.NZ sink: uploads trap events of flagged nodes as sensor records, one per event."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx
import orjson
from pydantic import AnyHttpUrl, Field, SecretStr, field_validator

from fieldbridge.clients.oauth import Grant, OAuthBearer, OAuthClient
from fieldbridge.codecs.trapnet import KIND, TRAP_EVENT
from fieldbridge.errors import AuthError, RetryableDeliveryError
from fieldbridge.model import JournalEntry, Reading
from fieldbridge.plugin import RouteSettings, SinkType, register_sink
from fieldbridge.sinks.http_client import HttpDestination, HttpSinkSettings, sink_client
from fieldbridge.sinks.http_errors import check_response, transport_failure

if TYPE_CHECKING:
    from fieldbridge.store import Store

TOKEN_URL = "https://io.trap.nz/api-sensor/oauth/token"
RECORD_URL = "https://io.trap.nz/api-sensor/iot/sensor-record"
FLAG = "trapnz"  # `fieldbridge devices set NODE --flag trapnz=on`: "Upload to TRAP.NZ API"
HEADERS = {"Content-Type": "application/hal+json", "Accept": "application/hal+json"}


class TrapNZSettings(HttpSinkSettings):
    """[[sinks.trapnz]]"""

    token_url: AnyHttpUrl = AnyHttpUrl(TOKEN_URL)
    url: AnyHttpUrl = AnyHttpUrl(RECORD_URL)
    client_id: str = Field(min_length=1)
    client_secret: SecretStr
    username: str = Field(min_length=1)
    password: SecretStr
    network: str = Field(default="Iwinet", min_length=1)  # field_network of every record
    # field_timeout of every record (seconds), as seed 000 sent it; 0 leaves it out.
    field_timeout: int = Field(default=7200, ge=0)
    battery_key: str = Field(default="VBat", min_length=1)  # the reading sent as battery voltage
    refresh_margin: float = Field(default=60.0, ge=0)  # seconds before expiry a token is renewed
    # Only nodes whose trapnz flag is on, as the original uploader had it.
    route: RouteSettings = Field(default_factory=lambda: RouteSettings(flag=FLAG))

    @field_validator("route")
    @classmethod
    def _always_flagged(cls, route: RouteSettings) -> RouteSettings:
        """A route table without a flag (e.g. only `sources`) still takes flagged nodes only."""
        return route if route.flag else route.model_copy(update={"flag": FLAG})


def trap_event(entry: JournalEntry) -> Reading | None:
    """The trap event a trap-network message carries, if it is one."""
    if entry.kind != KIND:
        return None
    return next((r for r in entry.readings if r.quantity == TRAP_EVENT), None)


def render_record(entry: JournalEntry, settings: TrapNZSettings) -> dict[str, Any]:
    """The sensor record of one trap event (integrations.md §1.1, as seed 000 sent it).

    The time is when fieldbridge received the event, so an upload delayed by an outage keeps
    the true time. Raises ValueError for an entry that is not a valid trap event.
    """
    trap = trap_event(entry)
    if trap is None or trap.extra is None:
        raise ValueError(f"message {entry.id} is not a trap event")
    extra = trap.extra
    event, state = extra.get("event"), extra.get("state")
    if event not in ("T", "H") or state not in ("O", "C"):
        raise ValueError(f"message {entry.id}: Event {event!r} / State {state!r} is not valid")
    # Seed 000's mapping: a heartbeat, or a trigger that left the trap set (O) or sprung (C).
    kind = "Heartbeat" if event == "H" else "Set" if state == "O" else "Sprung"
    fields: dict[str, Any] = {
        "type": "sensor_report",
        "field_event": [{"value": kind}],
        "field_status": [{"value": "Set" if state == "O" else "Sprung"}],
        "field_network": [{"value": settings.network}],
    }
    gateway = extra.get("gateway")
    if gateway is not None and gateway != "":
        fields["field_gateway"] = [{"value": gateway}]
    battery = next(
        (
            r.value
            for r in entry.readings
            if r.quantity == settings.battery_key and r.value is not None
        ),
        None,
    )
    if battery is not None:
        fields["field_battery_voltage"] = [{"value": battery}]
    if settings.field_timeout:
        fields["field_timeout"] = [{"value": settings.field_timeout}]
    when = datetime.fromtimestamp(trap.measured_at, UTC).isoformat()
    return {"dev_id": entry.device, "metadata": {"time": when}, "payload_fields": fields}


class TrapNZDestination(HttpDestination):
    """One POST per trap event, signed with a token from the password grant.

    `transport` replaces httpx's network transport of the record calls, `token_transport`
    that of the token calls (see sink_client).
    """

    max_batch = 1  # one record per request: the cursor moves after each

    def __init__(
        self,
        settings: TrapNZSettings,
        transport: httpx.AsyncBaseTransport | None = None,
        token_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self._transport = transport
        self._token_transport = token_transport
        self._store: Store | None = None
        self._auth: OAuthBearer | None = None
        self._client: httpx.AsyncClient | None = None

    def bind(self, store: Store) -> None:
        self._store = store  # keeps the rotated refresh token and the failures

    def takes(self, entry: JournalEntry) -> bool:
        return trap_event(entry) is not None

    def skip_reason(self, entry: JournalEntry) -> str | None:
        trap = trap_event(entry)
        problem = None if trap is None or trap.extra is None else trap.extra.get("problem")
        return str(problem) if problem else None  # bad_event, bad_state (the codec's checks)

    def health(self) -> Mapping[str, Any] | None:
        return None if self._auth is None else {"auth": self._auth.status().as_dict()}

    async def __aenter__(self) -> TrapNZDestination:
        settings = self.settings
        if self._auth is None:  # kept across restarts of the sink: its back-off goes on
            self._auth = OAuthBearer(
                OAuthClient(
                    token_url=str(settings.token_url),
                    client_id=settings.client_id,
                    client_secret=settings.client_secret,
                    grant=Grant.PASSWORD,
                    username=settings.username,
                    password=settings.password,
                    refresh_margin=settings.refresh_margin,
                    timeout=settings.timeout,
                    verify_tls=settings.verify_tls,
                    max_backoff=settings.max_backoff,
                ),
                name=f"sink {settings.name}",
                keeper=self._store,
                key=f"sink:{settings.name}",
                transport=self._token_transport,
            )
        self._client = sink_client(settings, HEADERS, transport=self._transport)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await super().__aexit__(exc_type, exc, tb)
        if self._auth is not None:
            await self._auth.aclose()

    async def send(self, entries: Sequence[JournalEntry]) -> None:
        assert self._client is not None and self._auth is not None, "use inside `async with`"
        what = f"trapnz {self.settings.name}"
        for entry in entries:
            body = orjson.dumps(render_record(entry, self.settings))
            try:
                response = await self._client.post(
                    str(self.settings.url), content=body, auth=self._auth
                )
            except AuthError as exc:  # its message names the sink and the token endpoint
                raise RetryableDeliveryError(
                    str(exc),
                    status=exc.status if exc.refused else None,
                    retry_after=exc.retry_after,
                ) from exc
            except httpx.TransportError as exc:
                raise transport_failure(exc, what) from exc
            check_response(response, what)


register_sink("trapnz", SinkType(TrapNZSettings, TrapNZDestination))
