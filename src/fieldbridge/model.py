"""The records that flow from sources through ingest to the store and the sinks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar, dataclass_transform

from fieldbridge.errors import DecodeError
from fieldbridge.printable import describe, escape, first_unprintable

SHOWN_ID = 80  # characters of a refused device id quoted in a reason
T = TypeVar("T")


@dataclass_transform(frozen_default=True)
def hot_record(cls: type[T]) -> type[T]:
    """A record made once per message or reading: frozen for the type checker (mypy refuses an
    assignment to a field), a plain slots dataclass at run time, equal and hashable by value
    as a frozen one. A frozen dataclass's __init__ sets each field through
    object.__setattr__: about 1 µs more per object, on the path every message takes."""
    return dataclass(slots=True, unsafe_hash=True)(cls)


@hot_record
class Reading:
    """One measured value of one quantity at one instant."""

    quantity: str
    value: float | None
    measured_at: float  # Unix seconds, UTC
    channel: int = 0
    unit: str | None = None
    extra: Mapping[str, Any] | None = None
    # Natural identity within the device and instant, e.g. "ch1@1717243200": a second reading
    # with the same device, time and key (a resent frame, a redelivered message) is not stored.
    key: str | None = None


class Role(StrEnum):
    """What a device is in a relayed network (the trap network): ranked node < repeater <
    gateway; the registry keeps the highest role a device was seen in."""

    NODE = "node"
    REPEATER = "repeater"
    GATEWAY = "gateway"


class DeviceStatus(StrEnum):
    """A device's liveness: current (heard within its allowed downtime), down, maintenance."""

    CURRENT = "current"
    DOWN = "down"
    MAINTENANCE = "maintenance"


@dataclass(frozen=True, slots=True)
class Relay:
    """A gateway or repeater that carried a message: seen alive, linked to the sender."""

    device: str
    role: Role


@dataclass(frozen=True, slots=True)
class NetworkReport:
    """What a network message says beyond its readings; the commit applies it to the registry.

    A pure codec cannot read the registry, so naming CSV values through the device's message
    type (`fields`) also happens at commit, in the same transaction.
    """

    role: Role = Role.NODE  # the sender's role as this message shows it
    fields: tuple[str, ...] | None = None  # CSV values in order, named by the message type
    relays: tuple[Relay, ...] = ()  # who carried it, gateway first
    team: str | None = None
    battery_key: str = "VBat"  # the value that is the battery level, also among named fields
    # False: update the device if it is registered, never create it (trap events: an unknown
    # node stays unknown, as the original Trap.NZ uploader had it).
    creates: bool = True


@hot_record
class Decoded:
    """What a codec made of (part of) a payload: one message from one device."""

    device: str
    readings: tuple[Reading, ...] = ()
    kind: str | None = None
    idempotency_key: str | None = None
    attributes: Mapping[str, Any] | None = None
    raw: bytes | None = None  # the part of the payload this message came from; None = all of it
    # Accept only when `device` is already in the registry (else quarantined at commit); a pure
    # codec cannot look the registry up, so it asks the commit to.
    require_registered: bool = False
    report: NetworkReport | None = None  # a network message's registry update (trapnet codec)

    def __post_init__(self) -> None:
        # Every codec's output passes here, so none can forget the rule.
        if not self.device.isprintable():
            check_device_id(self.device, "device id")


def check_device_id(device: str, where: str) -> None:
    """Refuse a device id that is not printable text, naming `where` it came from.

    The rule is str.isprintable(): no control characters (C0, DEL, C1, so no ANSI escapes),
    no invisible format characters (bidi overrides, zero-width characters, soft hyphen), no
    separators but the plain space, no private-use or unassigned code points. An id shows on
    a terminal as exactly what it is, and one id cannot pass for another.
    """
    index = first_unprintable(device)
    if index is None:
        return
    shown = escape(device[:SHOWN_ID]) + ("..." if len(device) > SHOWN_ID else "")
    raise DecodeError(
        f"{where} '{shown}' contains the {describe(device[index])} at position {index}; "
        "device ids must be printable text (no control, format or invisible characters)",
        cause="bad_device_id",
    )


@dataclass(frozen=True, slots=True)
class Refusal:
    """Part of a payload a codec refused while it accepted the rest (one item of a batch):
    ingest quarantines it with the reason in the same transaction that stores the rest."""

    reason: str
    raw: bytes | None = None  # the refused part, kept in quarantine; None = the whole payload
    cause: str | None = None  # as DecodeError.cause


Codec = Callable[[bytes, Mapping[str, Any], float], Sequence[Decoded | Refusal]]
"""A pure function: payload, transport metadata, receive time -> messages (and refused parts,
when it accepts some of the payload), or DecodeError when it accepts none of it."""


@dataclass(slots=True)
class Incoming:
    """A payload a source hands to ingest, with the future ingest resolves after commit."""

    source: str
    payload: bytes
    codec: Codec
    meta: Mapping[str, Any]
    received_at: float
    result: asyncio.Future[Outcome]


@hot_record
class Accepted:
    """The payload is committed; `ids` are its journal ids (existing ones for repeats).

    `quarantined`: the parts the codec refused (Refusal), each kept in quarantine.
    """

    ids: tuple[int, ...]
    duplicates: int = 0
    quarantined: tuple[Rejected, ...] = ()


@dataclass(frozen=True, slots=True)
class Rejected:
    """The payload did not decode; it is kept in quarantine under `quarantine_id`."""

    reason: str
    quarantine_id: int
    malformed: bool = False  # the payload's outer syntax did not parse
    cause: str | None = None  # a short label to count by, e.g. "unknown_token"


Outcome = Accepted | Rejected


# A reading as the store keeps it, for sinks that render every reading straight into text
# (store.reading_rows): message id, quantity, value, measured_at, channel, unit, and
# extra as the stored JSON text (None when it has none).
ReadingRow = tuple[int, str, float | None, float, int, str | None, str | None]


@hot_record
class JournalEntry:
    """A committed message as sinks and the CLI read it back. Its readings are `readings`,
    or, when read with `rows=True`, `rows` (plain tuples, no objects built per reading)."""

    id: int
    received_at: float
    source: str
    device: str
    kind: str | None
    meta: Mapping[str, Any]
    payload: bytes
    readings: tuple[Reading, ...] = ()
    rows: tuple[ReadingRow, ...] = ()
    # Read without readings (a sink that reads them itself): the journal's packed text of its
    # plain readings (fieldbridge.packed), None when they are not all plain or it has none.
    packed: str | None = None


@dataclass(frozen=True, slots=True)
class Device:
    """A device of the registry."""

    id: str
    kind: str | None
    name: str | None
    source: str
    first_seen: float
    last_seen: float
    message_count: int
    attributes: Mapping[str, Any] = field(default_factory=dict)
    flags: Mapping[str, bool] = field(default_factory=dict)
    role: Role | None = None  # None: not part of a relayed network
    status: DeviceStatus = DeviceStatus.CURRENT
    status_since: float | None = None
    allowed_downtime_min: int = 60
    message_type: str | None = None  # names its CSV values (`fieldbridge messagetypes`)
    team: str | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of a device's status, and when its notifications were published."""

    id: int
    device: str
    from_status: DeviceStatus
    to_status: DeviceStatus
    at: float
    reason: str = ""
    notified_at: float | None = None


class NotifyChannel(StrEnum):
    EMAIL = "email"
    SMS = "sms"


@dataclass(frozen=True, slots=True)
class Subscriber:
    """Who is told when a device goes down or comes back up."""

    channel: NotifyChannel
    address: str

    def __str__(self) -> str:
        return f"{self.channel.value}:{self.address}"


class FieldType(StrEnum):
    """How a message type reads one CSV value: S text, I integer, F float (I and F are both
    stored as float readings, as the original system parsed them)."""

    TEXT = "S"
    INTEGER = "I"
    FLOAT = "F"


@dataclass(frozen=True, slots=True)
class MessageField:
    """One position of a message type: its name, how it is read, and whether it is a tag."""

    name: str
    type: FieldType
    is_tag: bool = False


@dataclass(frozen=True, slots=True)
class MessageType:
    """Names for the values of a CSV line, in order; None in `fields` skips a position."""

    name: str
    fields: tuple[MessageField | None, ...]
    description: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceLink:
    """A gateway or repeater that relayed a device's messages, and when it last did."""

    via: str
    role: Role
    last_seen: float


@dataclass(frozen=True, slots=True)
class StoredReading:
    """A reading as it sits in the store, with its device and message."""

    message_id: int
    device: str
    reading: Reading


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    """A payload that did not decode, kept with the reason."""

    id: int
    received_at: float
    source: str
    meta: Mapping[str, Any]
    payload: bytes
    reason: str


class DeadLetterState(StrEnum):
    """Whether a dead letter waits for an operator or is to be sent again."""

    DEAD = "dead"
    RETRY = "retry"  # `fieldbridge sinks deadletters retry`: the sink sends it again


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message a sink's destination refused for good."""

    id: int
    sink: str
    message_id: int
    attempts: int
    status: int | None
    body: str
    created_at: float
    state: DeadLetterState


class SinkRunState(StrEnum):
    """What a sink is doing, as health, `fieldbridge sinks status` and the store show it."""

    STARTING = "starting"
    DISABLED = "disabled"
    IDLE = "idle"  # delivered everything it takes
    RUNNING = "running"  # sending a batch
    PAUSED = "paused"
    BACKOFF = "backoff"  # waiting to retry a destination that failed
    FAILING = "failing"  # the destination refuses every message (404, 401, ...); kept, retrying
    ERROR = "error"  # an unexpected error; the sink restarts
    STORE_ERROR = "store-error"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class SinkState:
    """What the store knows of one sink: cursor, pause flag, last state and error."""

    name: str
    cursor: int
    paused: bool
    state: SinkRunState
    last_error: str | None
    replay_from: int | None
    updated_at: float


class DownlinkState(StrEnum):
    """Where a downlink is: queued -> sent (in an answer) -> confirmed, or failed (given up)."""

    QUEUED = "queued"
    SENT = "sent"
    CONFIRMED = "confirmed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Downlink:
    """A payload queued for a device, delivered in the answer to its next request.

    A device reports a configuration hash (a version of its settings); a downlink that changes
    settings counts as applied once the device reports a hash other than `sent_hash`.
    """

    id: int
    device: str
    payload: bytes
    state: DownlinkState
    meta: Mapping[str, Any]  # what the queuer noted besides, e.g. the sink and message id
    created_at: float
    sent_at: float | None = None
    confirmed_at: float | None = None
    origin: str | None = None  # who queued it: "cli", "thingworx", ...
    fields: Mapping[str, Any] | None = None  # the settings as the queuer named them
    # True: applied once the device's hash changes; False: once it uploads anything (a
    # request that changes no setting); None: the source decides when it sends it.
    expect_hash_change: bool | None = None
    attempts: int = 0  # how often it was sent
    sent_hash: int | None = None  # the device's configuration hash when it was last sent
    failed_reason: str | None = None
    failed_at: float | None = None


@dataclass(frozen=True, slots=True)
class StoredToken:
    """An OAuth token as the store keeps it, so a restart needs no new grant.

    `fingerprint` names the endpoint, client and user it was issued for: a token kept for
    other settings is not used. The token values are secrets: left out of repr.
    """

    fingerprint: str
    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    token_type: str
    expires_at: float | None  # Unix seconds; None: the server gave no lifetime
    updated_at: float


@dataclass(frozen=True, slots=True)
class TokenHealth:
    """How getting a sink's token goes: failures in a row and the last error (no secrets)."""

    key: str
    failures: int
    last_error: str | None
    failed_at: float | None
    updated_at: float
    expires_at: float | None


class DuneActionState(StrEnum):
    """Where the DUNE DB sink is with one message's action."""

    INTENDED = "intended"  # recorded before the POST: the DB may or may not have it
    CREATED = "created"  # the DB answered with the action id


@dataclass(frozen=True, slots=True)
class DuneAction:
    """The action the DUNE DB sink made (or means to make) of one message's readings."""

    sink: str
    message_id: int
    state: DuneActionState
    component_uuid: str
    form_id: str
    readings: tuple[Mapping[str, Any], ...]  # what the action carries: quantity, value, time
    action_id: str | None
    attempts: int  # POSTs that may have reached the DB; above 1: possibly a duplicate
    intended_at: float
    created_at: float | None
