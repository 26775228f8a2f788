"""Decodes the trap network's MQTT messages by topic family into messages and registry updates."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fieldbridge.codecs.trapnet.attributes import registry_attributes
from fieldbridge.codecs.trapnet.csvlines import gateway_line, status_line
from fieldbridge.codecs.trapnet.ids import NODE_ID, OWN_ID, ignored, node_id
from fieldbridge.codecs.trapnet.jsonmsg import excerpt, load_object, readings_of
from fieldbridge.errors import DecodeError
from fieldbridge.model import Decoded, NetworkReport, Reading, Relay, Role

KIND = "trapnet"
TRAP_TOPIC = "EnvironmentalServices"
TRAP_EVENT = "trap_event"  # the quantity of a trap event reading; the Trap.NZ sink takes these
EVENTS = frozenset({"T", "H"})  # trigger, heartbeat
STATES = frozenset({"O", "C"})  # open, closed
ID_KEYS = frozenset({"NodeID", "Gateway"})


class TrapNetCodec:
    """The configured codec: a pure function of (payload, meta, received_at)."""

    __slots__ = ("battery_key", "prefix")

    def __init__(self, prefix: str, battery_key: str) -> None:
        self.prefix = prefix
        self.battery_key = battery_key

    def __call__(
        self, payload: bytes, meta: Mapping[str, Any], received_at: float
    ) -> list[Decoded]:
        topic = meta.get("topic")
        if not isinstance(topic, str) or not topic:
            raise DecodeError(
                "no MQTT topic: the trapnet codec tells messages apart by topic; use it on an "
                "MQTT source"
            )
        levels = topic.split("/")
        if levels[0] == self.prefix:
            family = levels[1] if len(levels) > 1 else ""
            if family == "Status":
                return [self._status_csv(payload, received_at)]
            if family == "Gateway":
                return [self._gateway_csv(payload, received_at)]
            if family == "Network":
                return [self._network(payload, levels, received_at)]
            if family == "Node":
                return [self._node(payload, levels, received_at)]
            raise ignored(
                f"{self.prefix}/{family[:40]} is not a data topic (Status, Gateway, Network, "
                "Node); subscribe to those only to keep it out"
            )
        if levels[0] == TRAP_TOPIC:
            return [self._trap_event(payload, received_at)]
        return [self._team(payload, levels[0], received_at)]

    def _status_csv(self, payload: bytes, at: float) -> Decoded:
        gateway, values = status_line(_text(payload, "Status"))
        return self._message(
            gateway,
            status=True,
            payload=payload,
            at=at,
            report=NetworkReport(Role.GATEWAY, fields=values, battery_key=self.battery_key),
        )

    def _gateway_csv(self, payload: bytes, at: float) -> Decoded:
        line = gateway_line(_text(payload, "Gateway"))
        return self._message(
            line.node,
            status=line.status,
            payload=payload,
            at=at,
            report=NetworkReport(
                line.role,
                fields=None if line.status else line.values,
                relays=line.relays,
                battery_key=self.battery_key,
            ),
        )

    def _network(self, payload: bytes, levels: list[str], at: float) -> Decoded:
        data = load_object(payload, "Network")
        if data.get("Status") == "Missing":
            raise ignored('"Status":"Missing" (the monitor\'s own report of a silent node)')
        role = Role.NODE
        if len(levels) > 2 and levels[2]:
            device = node_id(levels[2], "Network topic level 3")
        elif "NodeID" in data:
            device = node_id(data["NodeID"], "Network NodeID")
        elif "Gateway" in data:
            device = node_id(data["Gateway"], "Network Gateway")
            role = Role.GATEWAY
        else:
            raise DecodeError(
                "Network: no device id; publish on <prefix>/Network/<id> or send NodeID or Gateway"
            )
        relays: tuple[Relay, ...] = ()
        gateway = data.get("Gateway")
        if role is Role.NODE and _plain_id(gateway) and gateway != device:
            relays = (Relay(str(gateway), Role.GATEWAY),)
        return self._json(
            device, data, status=True, payload=payload, at=at, role=role, relays=relays
        )

    def _node(self, payload: bytes, levels: list[str], at: float) -> Decoded:
        if len(levels) < 3 or not levels[2]:
            raise DecodeError("Node: the topic must be <prefix>/Node/<node id>")
        device = node_id(levels[2], "Node topic level 3")
        data = load_object(payload, "Node")
        return self._json(device, data, status=False, payload=payload, at=at)

    def _team(self, payload: bytes, team: str, at: float) -> Decoded:
        data = load_object(payload, f"team {team[:40]}")
        if "NodeID" not in data:
            raise DecodeError(f"team {team[:40]}: a team message needs a NodeID key")
        device = node_id(data["NodeID"], f"team {team[:40]} NodeID")
        team_id = node_id(team, "team (topic level 1)")
        return self._json(
            device, data, status="Status" in data, payload=payload, at=at, team=team_id
        )

    def _trap_event(self, payload: bytes, at: float) -> Decoded:
        data = load_object(payload, TRAP_TOPIC)
        if "NodeID" not in data:
            raise DecodeError(f"{TRAP_TOPIC}: a trap event needs a NodeID key")
        device = node_id(data["NodeID"], f"{TRAP_TOPIC} NodeID")
        event, state = data.get("Event"), data.get("State")
        # Kept even when invalid: the Trap.NZ sink skips it and counts it by this reason.
        problem = None
        if not (isinstance(event, str) and event in EVENTS):
            problem = "bad_event"
        elif not (isinstance(state, str) and state in STATES):
            problem = "bad_state"
        extra: dict[str, Any] = {"event": _shown(event), "state": _shown(state)}
        for key, name in (("Gateway", "gateway"), ("TrapID", "trap_id")):
            if key in data:
                extra[name] = _shown(data[key])
        if problem is not None:
            extra["problem"] = problem
        readings = (Reading(TRAP_EVENT, None, at, extra=extra), *readings_of(data, at, ID_KEYS))
        relays: tuple[Relay, ...] = ()
        gateway = data.get("Gateway")
        if _plain_id(gateway):
            relays = (Relay(str(gateway), Role.GATEWAY),)  # optional: an odd one is not linked
        return Decoded(
            device=device,
            readings=readings,
            kind=KIND,
            attributes=registry_attributes(data, self.battery_key),
            report=NetworkReport(relays=relays, battery_key=self.battery_key, creates=False),
        )

    def _json(
        self,
        device: str,
        data: dict[str, Any],
        *,
        status: bool,
        payload: bytes,
        at: float,
        role: Role = Role.NODE,
        team: str | None = None,
        relays: tuple[Relay, ...] = (),
    ) -> Decoded:
        if role is Role.NODE and device.startswith("RP"):
            role = Role.REPEATER
        return self._message(
            device,
            status=status,
            payload=payload,
            at=at,
            readings=readings_of(data, at, ID_KEYS),
            attributes=registry_attributes(data, self.battery_key),
            report=NetworkReport(role, relays=relays, team=team, battery_key=self.battery_key),
        )

    def _message(
        self,
        device: str,
        *,
        status: bool,
        payload: bytes,
        at: float,
        report: NetworkReport,
        readings: tuple[Reading, ...] = (),
        attributes: Mapping[str, Any] | None = None,
    ) -> Decoded:
        what = "last_status" if status else "last_data"
        noted = {**(attributes or {}), what: excerpt(payload), f"{what}_at": at}
        return Decoded(device=device, readings=readings, kind=KIND, attributes=noted, report=report)


def _text(payload: bytes, what: str) -> str:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError(f"{what}: a CSV line must be UTF-8 text", malformed=True) from None
    if not text.strip():
        raise DecodeError(f"{what}: the line is empty")
    if "\x00" in text:
        raise DecodeError(f"{what}: the line holds a NUL character")
    return text


def _plain_id(value: object) -> bool:
    """Whether an optional id (a Gateway key) is valid; an invalid one is only not linked."""
    return isinstance(value, str) and bool(NODE_ID.fullmatch(value)) and value != OWN_ID


def _shown(value: object) -> object:
    """A JSON value kept as sent (text cut to 64 characters) for the trap event's extra."""
    if isinstance(value, str):
        return value[:64].replace("\x00", "\\x00")
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)[:64]
