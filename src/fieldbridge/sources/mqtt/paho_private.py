"""The private paho-mqtt names FastClient relies on, checked each time one is built.

client.py overrides and calls private paho 2.x names (see its docstring for why). paho may
rename them in any release; this list is the one place that says which, and
`require_compatible` turns an incompatible paho into an error at start (and in CI), instead of a
client that silently stops parsing messages or, worst, stops its keepalive in the field.
"""

from __future__ import annotations

import importlib.metadata
import inspect
from dataclasses import dataclass

import paho.mqtt as paho_package
import paho.mqtt.client as paho

from fieldbridge.errors import IncompatibleDependency

TESTED = "paho-mqtt>=2.2,<2.3"  # pyproject.toml's pin: the minor these names were checked on


@dataclass(frozen=True, slots=True)
class Method:
    """A method of paho.Client we override or call, or whose body must still use a private name."""

    name: str
    why: str
    params: tuple[str, ...] = ()  # leading parameters (after self) our override or call passes
    uses: tuple[str, ...] = ()  # names its code must still use for our part to take effect


@dataclass(frozen=True, slots=True)
class Attribute:
    """An attribute paho.Client.__init__ sets that we read or write."""

    name: str
    why: str
    kind: type | tuple[type, ...] = object


METHODS = (
    Method(
        "_packet_read",
        "overridden: whole QoS 0/1 PUBLISH packets are taken from our read buffer; "
        "the rest is parsed by paho from the same buffer through _sock_recv",
        uses=("_sock_recv", "_in_packet", "_packet_handle"),
    ),
    Method(
        "_sock_recv",
        "overridden: 256 KiB reads, paho's small reads served from them; sets "
        "_last_bytes_received for the keepalive",
        params=("bufsize",),
    ),
    Method("_create_socket", "overridden: returns the socket connected beforehand"),
    Method(
        "_sock_close",
        "called by drop(); must tell LoopDriver through on_socket_close",
        uses=("_call_socket_close",),
    ),
    Method(
        "_packet_queue",
        "called by queue_pubacks() with (command, packet, mid, qos)",
        params=("command", "packet", "mid", "qos"),
        uses=("_out_packet", "_call_socket_register_write"),
    ),
    Method("_call_socket_register_write", "called by _sock_recv when TLS must write to read"),
    Method(
        "_check_keepalive",
        "keepalive: sends PINGREQ judging by _last_bytes_received, which our _sock_recv sets",
        uses=("_last_bytes_received", "_ping_t", "_send_pingreq", "time_func"),
    ),
    Method(
        "loop_misc",
        "keepalive: LoopDriver calls it every second; it must run _check_keepalive and "
        "close the connection when a PINGRESP is overdue (_ping_t)",
        uses=("_check_keepalive", "_ping_t", "_sock_close"),
    ),
    Method(
        "_handle_pingresp",
        "keepalive: a PINGRESP (parsed by paho, never by our fast path) must clear _ping_t",
        uses=("_ping_t",),
    ),
    Method("loop_read", "LoopDriver's read; must go through _packet_read", uses=("_packet_read",)),
    Method("reconnect", "must open the socket through _create_socket", uses=("_create_socket",)),
)

ATTRIBUTES = (
    Attribute("_in_packet", "read by _packet_read: our fast path runs only between packets", dict),
    Attribute("_protocol", "read by _packet_read: MQTT 5 goes through paho's path", int),
    Attribute("_sock", "read by _sock_recv and buffered: the connected socket"),
    Attribute("_last_bytes_received", "keepalive: written by our _sock_recv", float),
    Attribute("_ping_t", "keepalive: when the unanswered PINGREQ left (0 = none)", float),
)

MODULE_FUNCTIONS = (("time_func", "keepalive: the clock _last_bytes_received is compared with"),)

OWN_NAMES = (  # FastClient adds these; if paho had them, we would overwrite paho's state
    "_rbuf",
    "_rpos",
    "_prepared",
    "take_publish",
    "take_publishes",
    "holding",
    "on_publish_packet",
    "use_socket",
    "buffered",
    "drop",
    "queue_pubacks",
)


def paho_version() -> str:
    """The installed paho-mqtt's version."""
    try:
        return importlib.metadata.version("paho-mqtt")
    except importlib.metadata.PackageNotFoundError:
        return str(getattr(paho_package, "__version__", "(unknown version)"))


def _method_problem(method: Method) -> str | None:
    found = inspect.getattr_static(paho.Client, method.name, None)
    if found is None:
        return f"paho.Client.{method.name} is missing ({method.why})"
    code = getattr(inspect.unwrap(found), "__code__", None)
    if not callable(found) or code is None:
        return f"paho.Client.{method.name} is no longer a plain method ({method.why})"
    if method.params:
        names = tuple(inspect.signature(found).parameters)[1 : 1 + len(method.params)]
        if names != method.params:
            return (
                f"paho.Client.{method.name} takes ({', '.join(names)}), not "
                f"({', '.join(method.params)}) ({method.why})"
            )
    lost = [name for name in method.uses if name not in code.co_names]
    if lost:
        return f"paho.Client.{method.name} no longer uses {', '.join(lost)} ({method.why})"
    return None


def _attribute_problem(client: paho.Client, attribute: Attribute) -> str | None:
    missing = object()
    value = getattr(client, attribute.name, missing)
    if value is missing:
        return f"paho.Client().{attribute.name} is missing ({attribute.why})"
    if not isinstance(value, attribute.kind):
        return f"paho.Client().{attribute.name} is a {type(value).__name__} now ({attribute.why})"
    if isinstance(value, dict) and attribute.name == "_in_packet" and "command" not in value:
        return f"paho.Client()._in_packet has no 'command' ({attribute.why})"
    return None


def incompatibilities(client: paho.Client) -> list[str]:
    """What of the names above the installed paho lacks, one phrase each (empty: all there).

    `client` must have run paho.Client.__init__ and none of FastClient's own set-up.
    """
    problems = [p for p in map(_method_problem, METHODS) if p is not None]
    problems += [p for a in ATTRIBUTES if (p := _attribute_problem(client, a)) is not None]
    problems += [
        f"paho.mqtt.client.{name} is missing or not callable ({why})"
        for name, why in MODULE_FUNCTIONS
        if not callable(getattr(paho, name, None))
    ]
    own = vars(client)
    problems += [
        f"paho.Client now has {name} of its own, which FastClient would overwrite"
        for name in OWN_NAMES
        if inspect.getattr_static(paho.Client, name, None) is not None or name in own
    ]
    return problems


def require_compatible(client: paho.Client) -> None:
    """Raise IncompatibleDependency naming the paho version and every name it lacks."""
    problems = incompatibilities(client)
    if problems:
        raise IncompatibleDependency(
            f"paho-mqtt {paho_version()} is installed, but fieldbridge's MQTT client "
            f"(fieldbridge/sources/mqtt/client.py) relies on private paho names this version "
            f"changed: {'; '.join(problems)}. Install the tested version: "
            f"pip install '{TESTED}' (the pin in pyproject.toml); moving to another paho means "
            "checking client.py against it and running tests/sources/mqtt/test_client_parser.py"
        )
