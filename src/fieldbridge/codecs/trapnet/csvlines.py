"""The CSV lines of the trap network: gateway status, and node data relayed by a gateway."""

from __future__ import annotations

from dataclasses import dataclass

from fieldbridge.codecs.trapnet.ids import ignored, node_id
from fieldbridge.errors import DecodeError
from fieldbridge.model import Relay, Role

MAX_FIELDS = 256


@dataclass(frozen=True, slots=True)
class GatewayLine:
    """A line on <prefix>/Gateway: who sent it, who carried it, and its values."""

    gateway: str
    node: str
    repeaters: tuple[str, ...]
    status: bool  # field 3 is "OK": a status report, not data
    values: tuple[str, ...]  # after the node id (and "OK"), repeater items stripped

    @property
    def role(self) -> Role:
        return Role.REPEATER if self.node.startswith("RP") else Role.NODE

    @property
    def relays(self) -> tuple[Relay, ...]:
        return (
            Relay(self.gateway, Role.GATEWAY),
            *(Relay(r, Role.REPEATER) for r in self.repeaters),
        )


def split(text: str) -> list[str]:
    """The comma-separated values of a line (no quoting: the devices never quote)."""
    values = text.strip().split(",")
    if len(values) > MAX_FIELDS:
        raise DecodeError(f"more than {MAX_FIELDS} comma-separated values")
    return values


def status_line(text: str) -> tuple[str, tuple[str, ...]]:
    """A line on <prefix>/Status: the gateway id (field 1) and the values after it."""
    values = split(text)
    return node_id(values[0], "Status field 1 (gateway id)"), tuple(values[1:])


def gateway_line(text: str) -> GatewayLine:
    """A line on <prefix>/Gateway: gateway,node,values... with RP... repeater items anywhere
    after the node id. Raises DecodeError (cause ignored) for GWSTATUS rows and Test nodes."""
    values = split(text)
    if "GWSTATUS" in values[0]:
        raise ignored("GWSTATUS row (a gateway's housekeeping line, skipped as the original did)")
    if len(values) < 2:
        raise DecodeError("a Gateway line is gateway,node,values...; this one has no node id")
    if values[1].strip().startswith("Test"):
        raise ignored(f"test node {values[1].strip()[:40]!r} (ids starting with Test are skipped)")
    gateway = node_id(values[0], "Gateway field 1 (gateway id)")
    node = node_id(values[1], "Gateway field 2 (node id)")
    repeaters: list[str] = []
    rest: list[str] = []
    for index, value in enumerate(values[2:], start=3):
        if value.strip().startswith("RP"):
            repeaters.append(node_id(value, f"Gateway field {index} (repeater id)"))
        else:
            rest.append(value)
    status = bool(rest) and rest[0].strip() == "OK"
    return GatewayLine(gateway, node, tuple(repeaters), status, tuple(rest[1:] if status else rest))
