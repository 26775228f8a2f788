"""A change an operator makes to one device, under the rules `devices set` and the API share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fieldbridge.model import Device, DeviceStatus, NotifyChannel, Role, Subscriber
from fieldbridge.store.registry import UNSET

if TYPE_CHECKING:
    from fieldbridge.store import Store

LOCATION_KEY = "location_override"  # the attribute a fixed location is kept in


class ChangeRefused(ValueError):
    """The change breaks a rule; the message says which and what to give instead."""


def parse_subscriber(text: str, where: str) -> Subscriber:
    """`email:ADDRESS` or `sms:NUMBER` as a Subscriber; ChangeRefused naming `where`."""
    channel, _, address = text.partition(":")
    address = address.strip()
    if channel not in ("email", "sms") or not address:
        raise ChangeRefused(f"{where} {text!r}: give email:ADDRESS or sms:NUMBER")
    if channel == "email" and "@" not in address:
        raise ChangeRefused(f"{where} {text!r}: an email address has an @")
    if channel == "sms" and not address.lstrip("+").replace(" ", "").isdigit():
        raise ChangeRefused(f"{where} {text!r}: an sms number is digits, e.g. sms:+64211234567")
    return Subscriber(NotifyChannel(channel), address)


def location(latitude: float, longitude: float, where: str) -> dict[str, float]:
    """A fixed location in degrees; ChangeRefused when it is off the globe."""
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
        raise ChangeRefused(
            f"{where}: latitude is -90..90 and longitude -180..180 degrees, e.g. -36.83,174.83"
        )
    return {"latitude": latitude, "longitude": longitude}


@dataclass(frozen=True)
class DeviceChange:
    """What to set; what is left out (None, empty) stays as it is.

    `message_type` and `team` take "" to clear them; `location` None leaves it, and
    `remove_location` drops a fixed location.
    """

    flags: Mapping[str, bool] = field(default_factory=dict)
    attributes: Mapping[str, object] = field(default_factory=dict)
    name: str | None = None
    message_type: str | None = None
    status: DeviceStatus | None = None
    allowed_downtime_min: int | None = None
    role: Role | None = None
    team: str | None = None
    location: Mapping[str, float] | None = None
    remove_location: bool = False
    notify: tuple[Subscriber, ...] = ()
    no_notify: tuple[Subscriber, ...] = ()

    @property
    def empty(self) -> bool:
        columns = (self.name, self.message_type, self.status, self.allowed_downtime_min)
        return (
            not self.flags
            and not self.attributes
            and self.location is None
            and not self.remove_location
            and not self.notify
            and not self.no_notify
            and columns == (None,) * 4
            and self.role is None
            and self.team is None
        )

    def check(self) -> None:
        """ChangeRefused unless the change is one an operator may make."""
        if self.empty:
            raise ChangeRefused(
                "nothing to set: give flags, attributes, name, message type, status, allowed "
                "downtime, role, team, location or who is notified"
            )
        if self.status is DeviceStatus.DOWN:
            raise ChangeRefused(
                "status down: a device goes down by itself when it stays silent past its "
                "allowed downtime; set current or maintenance"
            )
        if self.allowed_downtime_min is not None and self.allowed_downtime_min < 1:
            raise ChangeRefused("allowed downtime: at least 1 minute")


async def change_device(store: Store, device_id: str, change: DeviceChange) -> Device | None:
    """Check and apply `change` to a device and its subscribers; None if there is no such
    device. ChangeRefused when it breaks a rule or names a message type that does not exist."""
    change.check()
    if change.message_type and await store.get_message_type(change.message_type) is None:
        raise ChangeRefused(
            f"message type {change.message_type!r}: no such message type; add it with "
            "`fieldbridge messagetypes add`"
        )
    attributes: dict[str, object] = dict(change.attributes)
    if change.location is not None:
        attributes[LOCATION_KEY] = dict(change.location)
    mtype = change.message_type
    device = await store.update_device(
        device_id,
        flags=change.flags,
        attributes=attributes,
        name=change.name,
        status=change.status,
        allowed_downtime_min=change.allowed_downtime_min,
        role=change.role,
        message_type=UNSET if mtype is None else (mtype or None),
        team=UNSET if change.team is None else (change.team or None),
        remove_attributes=(LOCATION_KEY,) if change.remove_location else (),
    )
    if device is not None and (change.notify or change.no_notify):
        await store.set_subscribers(device_id, add=change.notify, remove=change.no_notify)
    return device
