"""What the REST API answers and accepts: one model per shape, so the OpenAPI document is exact."""

from __future__ import annotations

import math
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from fieldbridge.model import (
    DeadLetter,
    Device,
    DeviceLink,
    Downlink,
    MessageType,
    QuarantineEntry,
    Role,
    SinkRunState,
    StoredReading,
    Transition,
)
from fieldbridge.timefmt import iso

T = TypeVar("T")

IsoTime = Annotated[str, Field(description="ISO 8601 UTC, e.g. 2026-11-23T08:30:00Z")]
# Text a caller sends: printable, so the store (PostgreSQL text refuses NUL) and a terminal
# showing it later both take it as it is.
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
Text = Annotated[str, Field(max_length=256, pattern=PRINTABLE)]
Key = Annotated[str, Field(min_length=1, max_length=128, pattern=PRINTABLE)]
Scalar = str | int | float | bool | None


def iso_or_none(at: float | None) -> str | None:
    return None if at is None else iso(at)


class Page(BaseModel, Generic[T]):
    """One page of a listing; ask for the next with `cursor=next_cursor` (null: the last)."""

    items: list[T]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


class Location(BaseModel):
    latitude: float | None
    longitude: float | None
    source: Literal["override", "reported"] = Field(
        description="override: set by an operator; reported: what the device sends"
    )


class DeviceOut(BaseModel):
    id: str
    kind: str | None
    name: str | None
    source: str
    first_seen: IsoTime
    last_seen: IsoTime
    message_count: int
    attributes: dict[str, Any]
    flags: dict[str, bool] = Field(
        description="Routing switches, e.g. upload_trapnz, upload_thingsboard, upload_influxdb"
    )
    role: Role | None
    status: Literal["current", "down", "maintenance"]
    status_since: IsoTime | None
    allowed_downtime_min: int
    message_type: str | None
    team: str | None
    location: Location | None

    @classmethod
    def of(cls, d: Device) -> DeviceOut:
        return cls(
            id=d.id,
            kind=d.kind,
            name=d.name,
            source=d.source,
            first_seen=iso(d.first_seen),
            last_seen=iso(d.last_seen),
            message_count=d.message_count,
            attributes=dict(d.attributes),
            flags=dict(d.flags),
            role=d.role,
            status=d.status.value,
            status_since=iso_or_none(d.status_since),
            allowed_downtime_min=d.allowed_downtime_min,
            message_type=d.message_type,
            team=d.team,
            location=_location(d),
        )


def _location(d: Device) -> Location | None:
    """The manual override (`devices set --location`) over what the device reports."""
    override = d.attributes.get("location_override")
    if isinstance(override, dict):
        return Location(
            latitude=_degrees(override.get("latitude")),
            longitude=_degrees(override.get("longitude")),
            source="override",
        )
    lat, lon = d.attributes.get("latitude"), d.attributes.get("longitude")
    if lat is None and lon is None:
        return None
    return Location(latitude=_degrees(lat), longitude=_degrees(lon), source="reported")


def _degrees(value: object) -> float | None:
    """A stored coordinate as a number; what a codec stored as text reads as such, else null."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None  # JSON has no NaN


class Relay(BaseModel):
    device: str
    last_seen: IsoTime


class TransitionOut(BaseModel):
    from_status: str
    to_status: str
    at: IsoTime
    reason: str
    notified_at: IsoTime | None

    @classmethod
    def of(cls, t: Transition) -> TransitionOut:
        return cls(
            from_status=t.from_status.value,
            to_status=t.to_status.value,
            at=iso(t.at),
            reason=t.reason,
            notified_at=iso_or_none(t.notified_at),
        )


class DeviceDetail(DeviceOut):
    """A device as `fieldbridge devices show` shows it."""

    gateways: list[Relay]
    repeaters: list[Relay]
    relayed: list[Relay] = Field(description="Devices this one relayed, latest first.")
    notify: list[str] = Field(description="Who is told when it goes down or comes back up.")
    transitions: list[TransitionOut] = Field(description="Latest status changes, newest first.")

    @classmethod
    def full(
        cls,
        d: Device,
        links: list[DeviceLink],
        relayed: list[DeviceLink],
        notify: list[str],
        transitions: list[Transition],
    ) -> DeviceDetail:
        base = DeviceOut.of(d).model_dump()
        return cls(
            **base,
            gateways=[
                Relay(device=x.via, last_seen=iso(x.last_seen))
                for x in links
                if x.role is Role.GATEWAY
            ],
            repeaters=[
                Relay(device=x.via, last_seen=iso(x.last_seen))
                for x in links
                if x.role is Role.REPEATER
            ],
            relayed=[Relay(device=x.via, last_seen=iso(x.last_seen)) for x in relayed],
            notify=notify,
            transitions=[TransitionOut.of(t) for t in transitions],
        )


class LocationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)


class DevicePatch(BaseModel):
    """What to change; fields left out stay as they are (the rules of `devices set`)."""

    model_config = ConfigDict(extra="forbid")

    flags: dict[Key, bool] | None = Field(
        default=None,
        max_length=64,
        description='Switches to set, e.g. {"upload_trapnz": true}; others stay.',
    )
    attributes: dict[Key, Scalar] | None = Field(
        default=None, max_length=64, description="Attributes to set; others stay."
    )
    name: Annotated[str, Field(min_length=1, max_length=256, pattern=PRINTABLE)] | None = None
    message_type: Text | None = Field(
        default=None, description='Name its CSV values with this message type; "" detaches.'
    )
    status: Literal["current", "maintenance"] | None = Field(
        default=None, description="A device goes down by itself; it cannot be set down."
    )
    allowed_downtime_min: int | None = Field(default=None, ge=1, le=10_000_000)
    role: Role | None = None
    team: Text | None = Field(default=None, description='"" clears it.')
    location: LocationIn | None = Field(
        default=None,
        description="A fixed location shown instead of what it reports; null removes it.",
    )
    notify: list[Text] = Field(
        default_factory=list,
        max_length=64,
        description="email:ADDRESS or sms:NUMBER to tell when it goes down or comes back up.",
    )
    no_notify: list[Text] = Field(
        default_factory=list,
        max_length=64,
        description="email:ADDRESS or sms:NUMBER no longer told.",
    )


class ReadingOut(BaseModel):
    device: str
    message_id: int
    quantity: str
    value: float | str | None
    unit: str | None
    channel: int
    measured_at: IsoTime
    extra: dict[str, Any] | None

    @classmethod
    def of(cls, r: StoredReading) -> ReadingOut:
        reading = r.reading
        return cls(
            device=r.device,
            message_id=r.message_id,
            quantity=reading.quantity,
            value=reading.value,
            unit=reading.unit,
            channel=reading.channel,
            measured_at=iso(reading.measured_at),
            extra=dict(reading.extra) if reading.extra else None,
        )


class SinkAuth(BaseModel):
    state: Literal["ok", "failing"]
    failures: int
    last_error: str | None
    failed_at: IsoTime | None
    expires_at: IsoTime | None


class SinkOut(BaseModel):
    name: str
    type: str
    enabled: bool
    state: SinkRunState
    cursor: int = Field(description="The last message id the destination confirmed.")
    lag_messages: int
    lag_seconds: float
    dead_letters: int
    skipped: dict[str, int]
    auth: SinkAuth | None
    last_error: str | None


class SinkPaused(BaseModel):
    name: str
    paused: bool


class ReplayIn(BaseModel):
    """Exactly one of the two, as `fieldbridge sinks replay --from-id N | --since ISO`."""

    model_config = ConfigDict(extra="forbid")

    from_id: int | None = Field(default=None, ge=1, le=2**62, description="First message id.")
    since: Annotated[str, Field(max_length=64)] | None = Field(
        default=None, description="ISO 8601 time: what was received from then on."
    )


class ReplayOut(BaseModel):
    name: str
    from_id: int
    head_id: int
    messages: int = Field(description="How many messages it sends again.")


class DeadLetterOut(BaseModel):
    id: int
    sink: str
    message_id: int
    attempts: int
    status: int | None = Field(description="The destination's HTTP status, if it had one.")
    body: str | None = Field(description="What the destination answered.")
    created_at: IsoTime
    state: Literal["dead", "retry"]

    @classmethod
    def of(cls, d: DeadLetter) -> DeadLetterOut:
        return cls(
            id=d.id,
            sink=d.sink,
            message_id=d.message_id,
            attempts=d.attempts,
            status=d.status,
            body=d.body,
            created_at=iso(d.created_at),
            state=d.state.value,
        )


class Changed(BaseModel):
    id: int
    state: str


class QuarantineOut(BaseModel):
    id: int
    received_at: IsoTime
    source: str
    reason: str
    meta: dict[str, Any]
    size: int = Field(description="Bytes of the raw payload.")
    payload_hex: str
    payload_text: str | None = Field(description="The payload as UTF-8 text; null if it is not.")

    @classmethod
    def of(cls, q: QuarantineEntry) -> QuarantineOut:
        try:
            text: str | None = q.payload.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        return cls(
            id=q.id,
            received_at=iso(q.received_at),
            source=q.source,
            reason=q.reason,
            meta=dict(q.meta),
            size=len(q.payload),
            payload_hex=q.payload.hex(),
            payload_text=text,
        )


class ReingestOut(BaseModel):
    quarantine_id: int
    source: str
    message_ids: list[int] = Field(description="The journal messages it became.")
    duplicates: int = Field(description="Of those, how many were stored already.")
    quarantined: list[int] = Field(description="Parts still refused, quarantined anew.")


class Dropped(BaseModel):
    id: int
    dropped: bool


class DownlinkOut(BaseModel):
    id: int
    device: str
    state: Literal["queued", "sent", "confirmed", "failed"]
    payload_hex: str
    origin: str | None
    fields: dict[str, Any] | None
    expect_hash_change: bool | None
    attempts: int
    sent_hash: int | None
    failed_reason: str | None
    meta: dict[str, Any]
    created_at: IsoTime
    sent_at: IsoTime | None
    confirmed_at: IsoTime | None
    failed_at: IsoTime | None

    @classmethod
    def of(cls, d: Downlink) -> DownlinkOut:
        return cls(
            id=d.id,
            device=d.device,
            state=d.state.value,
            payload_hex=d.payload.hex(),
            origin=d.origin,
            fields=dict(d.fields) if d.fields is not None else None,
            expect_hash_change=d.expect_hash_change,
            attempts=d.attempts,
            sent_hash=d.sent_hash,
            failed_reason=d.failed_reason,
            meta=dict(d.meta),
            created_at=iso(d.created_at),
            sent_at=iso_or_none(d.sent_at),
            confirmed_at=iso_or_none(d.confirmed_at),
            failed_at=iso_or_none(d.failed_at),
        )


class DownlinkIn(BaseModel):
    """A configuration downlink, as `fieldbridge efento config SERIAL --set ... --request ...`."""

    model_config = ConfigDict(extra="forbid")

    device: Annotated[str, Field(pattern=r"^[0-9A-Fa-f]{12}$")] = Field(
        description="The sensor's serial: 12 hex digits."
    )
    settings: dict[Key, Any] = Field(
        default_factory=dict,
        max_length=64,
        description='ProtoConfig settings by name, e.g. {"transmission_interval": 900}.',
    )
    requests: list[Literal["device-info", "configuration"]] = Field(
        default_factory=list, max_length=2, description="Ask the sensor to upload these."
    )


class MessageFieldOut(BaseModel):
    name: str
    type: Literal["S", "I", "F"]
    is_tag: bool


class MessageTypeOut(BaseModel):
    name: str
    description: str | None
    fields: list[MessageFieldOut | None] = Field(description="null: a value that is skipped.")

    @classmethod
    def of(cls, m: MessageType) -> MessageTypeOut:
        return cls(
            name=m.name,
            description=m.description,
            fields=[
                None
                if spec is None
                else MessageFieldOut(name=spec.name, type=spec.type.value, is_tag=spec.is_tag)
                for spec in m.fields
            ],
        )


class UserOut(BaseModel):
    name: str
    role: Literal["admin", "viewer"]
    created_at: IsoTime
    last_login: IsoTime | None


NAME = r"^[A-Za-z0-9_.@-]{1,64}$"  # as `fieldbridge users add` and `tokens create` take


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=NAME)]
    role: Literal["admin", "viewer"]
    password: Annotated[str, Field(min_length=8, max_length=1024)]


class TokenOut(BaseModel):
    name: str
    scope: Literal["read", "write"]
    created_at: IsoTime
    created_by: str
    last_used: IsoTime | None
    revoked_at: IsoTime | None


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=NAME)]
    scope: Literal["read", "write"]


class TokenCreated(BaseModel):
    name: str
    scope: Literal["read", "write"]
    token: str = Field(description="Shown only now; only its hash is kept.")


class Revoked(BaseModel):
    name: str
    revoked: bool


class AuditOut(BaseModel):
    id: int
    at: IsoTime
    actor: str = Field(description="A user name, token:NAME or cli:USER.")
    action: str
    target: str
    details: dict[str, Any]


class HealthOut(BaseModel):
    """What /healthz says, for scripts behind the API's authentication."""

    model_config = ConfigDict(extra="allow")

    status: Literal["ok", "degraded", "unavailable"]
    version: str
    store: str


class VersionOut(BaseModel):
    version: str
    schema_head: str = Field(description="The schema revision this version ships.")
    schema_revision: str | None = Field(description="The revision the store is at.")
