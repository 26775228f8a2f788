"""A real ThingWorx REST server with the seed's Efento services; checks spec §5, misbehaves on cue.

`async with ThingWorxServer(APP_KEY, things) as twx:` serves on 127.0.0.1 (a free port) inside
the test's event loop; `twx.url` is the base URL for the sink's `url` setting. `things` maps a
Thing name to its services (service name -> role: "measurement", "configuration",
"device_info") and may give it properties.

It checks what integrations.md §5.3 says the real server checks, in this order, and refuses
with the status ThingWorx uses (§5.1):

  401  the appKey header (any case) is missing or not the key
  404  the path is not /Thingworx/Things/<Thing>/Services/<Service> or .../Properties/<Name>,
       or names an unknown Thing, Service or Property; a required parameter is missing
  405  a verb the characteristic does not take (services: POST; properties: GET and PUT)
  406  Accept does not allow application/json (ThingWorx answers text/html by default) [I]
  403  Content-Type is not application/json on POST/PUT
  500  the body is not a JSON object, or a parameter has the wrong shape: the service script
       throws on it [I]. Efento services: `payload` and `deviceJson` must be strings holding
       JSON (a nested object is re-implementation drift), `configuration` an object, `device`
       12 upper-case hex digits; the inner objects must have the seed's fields (§5.2).

Every refusal is recorded with its reason. `violations` lists those that are the client's
fault; a present but wrong key (the test changed `app_key`) only counts in `unauthorized`.
Each call the service took is in `received` (its parameters decoded, what a ThingWorx service
would see), separate from the HTTP answer. Misbehaviour: `fail(status, times)`, and scripted
answers per role with `script(role, *replies)`; `recover()` undoes both.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fieldbridge.web.server import WebServer

MEASUREMENT = "measurement"
CONFIGURATION = "configuration"
DEVICE_INFO = "device_info"
ROLES = (MEASUREMENT, CONFIGURATION, DEVICE_INFO)
# The seed's service inputs per role, all required.
PARAMETERS = {
    MEASUREMENT: ("payload",),
    CONFIGURATION: ("device", "configuration"),
    DEVICE_INFO: ("deviceJson",),
}
SERIAL = re.compile(r"^[0-9A-F]{12}$")
SEED_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$")
MEASUREMENT_FIELDS = {
    "measured_at": str,
    "serial": str,
    "next_measurement_at": str,
    "signal": int,
    "measurement_interval": int,
    "batteryStatus": str,
    "params": list,
}
PATH = re.compile(r"^/Thingworx/Things/([^/]+)/(Services|Properties)/([^/]+)/?$")


@dataclass(frozen=True)
class Thing:
    """A Thing of the fake: its services (name -> role) and properties (name -> value)."""

    services: Mapping[str, str] = field(default_factory=dict)
    properties: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reply:
    """A scripted answer: a status with a JSON value, raw text, or an empty body."""

    status: int = 200
    json: Any = None
    text: str | None = None

    def response(self) -> Response:
        if self.text is not None:
            return Response(self.text, status_code=self.status, media_type="text/plain")
        if self.json is None:
            return Response(b"", status_code=self.status)
        return JSONResponse(self.json, status_code=self.status)


# What the measurement service answers unless scripted; the other two answer 200, no body.
DEFAULT_REPLIES = {
    MEASUREMENT: Reply(json={"status": 200}),
    CONFIGURATION: Reply(),
    DEVICE_INFO: Reply(),
}


@dataclass(frozen=True)
class Call:
    """One request as the server saw it, with its answer."""

    at: float  # time.monotonic() on arrival
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    thing: str | None = None
    service: str | None = None
    role: str | None = None
    problem: str | None = None  # why it was refused; None when the service ran
    value: Any = None  # the decoded parameters the service got

    @property
    def params(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


@dataclass
class _Behaviour:
    fail_status: int | None = None
    fail_remaining: int | None = None  # None: until recover()
    scripts: dict[str, list[Reply]] = field(default_factory=dict)


class _Refusal(Exception):
    def __init__(self, status: int, reason: str, *, client_fault: bool = True) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.client_fault = client_fault


class ThingWorxServer:
    """ThingWorx on a real socket; `url` is the server's base URL."""

    def __init__(self, app_key: str, things: Mapping[str, Thing]) -> None:
        self.app_key = app_key
        self.things = dict(things)
        self.properties = {name: dict(t.properties) for name, t in self.things.items()}
        self.calls: list[Call] = []
        self.violations: list[str] = []
        self.unauthorized = 0
        self._behaviour = _Behaviour()
        self._changed = asyncio.Event()
        methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=methods)])
        self._web = WebServer(app, "127.0.0.1:0", graceful_s=2, keep_alive_s=30)
        self.port = self._web.port
        self.url = f"http://127.0.0.1:{self.port}"

    # --- views -----------------------------------------------------------------------------

    @property
    def received(self) -> list[Call]:
        """Calls a service ran and answered 2xx, in arrival order."""
        return [c for c in self.calls if c.problem is None and 200 <= c.status < 300]

    def values(self, role: str) -> list[Any]:
        """What the services of one role were given, in arrival order (repeats included)."""
        return [c.value for c in self.received if c.role == role]

    def answered(self, status: int) -> list[Call]:
        return [c for c in self.calls if c.status == status]

    async def wait_for(self, condition: Callable[[], bool], within: float = 10.0) -> None:
        """Return once `condition()` holds; AssertionError after `within` seconds."""
        deadline = time.monotonic() + within
        while not condition():
            left = deadline - time.monotonic()
            if left <= 0:
                statuses = [(c.role, c.status, c.problem) for c in self.calls[-10:]]
                raise AssertionError(
                    f"thingworx fake: condition not met within {within}s; last calls {statuses}"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.1))

    # --- misbehaviour ----------------------------------------------------------------------

    def fail(self, status: int = 500, times: int | None = None) -> None:
        """Answer `status` to calls that pass the checks, `times` times or until recover()."""
        self._behaviour.fail_status = status
        self._behaviour.fail_remaining = times

    def script(self, role: str, *replies: Reply) -> None:
        """Answer the next calls of `role` with these replies, in order, then as usual."""
        assert role in ROLES, role
        self._behaviour.scripts.setdefault(role, []).extend(replies)

    def recover(self) -> None:
        self._behaviour = _Behaviour()

    # --- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> ThingWorxServer:
        await self._web.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._web.__aexit__(exc_type, exc, tb)

    # --- the server -------------------------------------------------------------------------

    async def _handle(self, request: Request) -> Response:
        arrived = time.monotonic()
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        path = request.url.path
        where: dict[str, Any] = {}

        def record(status: int, problem: str | None = None, value: Any = None) -> None:
            self.calls.append(
                Call(arrived, request.method, path, headers, body, status, problem=problem,
                     value=value, **where)
            )  # fmt: skip
            self._changed.set()

        try:
            self._check_key(headers)
            thing, kind, name = _parse_path(path)
            where["thing"] = thing
            if kind == "Services":
                where["service"] = name
            self._check_known(thing, kind, name)
            if kind == "Properties":
                return self._property(request.method, headers, body, thing, name, record)
            where["role"] = role = self.things[thing].services[name]
            _check_verb(request.method, ("POST",), f"service {name}")
            _check_headers(headers)
            value = _check_parameters(role, body)
        except _Refusal as refusal:
            if refusal.client_fault:
                self.violations.append(f"{request.method} {path}: {refusal.reason}")
            else:
                self.unauthorized += 1
            record(refusal.status, refusal.reason)
            return JSONResponse({"error": refusal.reason}, status_code=refusal.status)

        b = self._behaviour
        if b.fail_status is not None and b.fail_remaining != 0:
            if b.fail_remaining is not None:
                b.fail_remaining -= 1
            record(b.fail_status, f"told to fail with {b.fail_status}")
            return JSONResponse({"error": "the server is failing"}, status_code=b.fail_status)
        scripted = b.scripts.get(role)
        reply = scripted.pop(0) if scripted else DEFAULT_REPLIES[role]
        record(reply.status, None if reply.status < 300 else "scripted failure", value)
        return reply.response()

    def _check_key(self, headers: Mapping[str, str]) -> None:
        key = headers.get("appkey")
        if key is None:
            raise _Refusal(401, "no appKey header")
        if key != self.app_key:
            raise _Refusal(401, "appKey is not a valid application key", client_fault=False)

    def _check_known(self, thing: str, kind: str, name: str) -> None:
        if thing not in self.things:
            raise _Refusal(404, f"Thing {thing!r} not found")
        known = self.things[thing].services if kind == "Services" else self.properties[thing]
        if name not in known:
            raise _Refusal(404, f"{kind[:-1]} {name!r} not found on Thing {thing!r}")

    def _property(
        self,
        method: str,
        headers: Mapping[str, str],
        body: bytes,
        thing: str,
        name: str,
        record: Callable[..., None],
    ) -> Response:
        _check_verb(method, ("GET", "PUT"), f"property {name}")
        if method == "GET":
            _check_accept(headers)
            record(200)
            return JSONResponse({"rows": [{name: self.properties[thing][name]}]})
        _check_headers(headers)
        data = _json_object(body)
        if name not in data:
            raise _Refusal(404, f"PUT body has no key {name!r} (the property's name)")
        self.properties[thing][name] = data[name]
        record(200, value=data[name])
        return Response(b"", status_code=200)


def _parse_path(path: str) -> tuple[str, str, str]:
    match = PATH.match(path)
    if match is None:
        raise _Refusal(404, f"no such resource {path}")
    thing, kind, name = (unquote(part) for part in match.groups())
    return thing, kind, name


def _check_verb(method: str, allowed: tuple[str, ...], what: str) -> None:
    if method not in allowed:
        raise _Refusal(405, f"{what} takes {' or '.join(allowed)}, not {method}")


def _check_accept(headers: Mapping[str, str]) -> None:
    accept = [p.split(";")[0].strip().lower() for p in headers.get("accept", "").split(",")]
    if "application/json" not in accept:
        raise _Refusal(406, f"Accept {headers.get('accept')!r} does not allow application/json")


def _check_headers(headers: Mapping[str, str]) -> None:
    _check_accept(headers)
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise _Refusal(403, f"Content-Type {content_type!r} is not application/json")


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _Refusal(500, f"body is not UTF-8 JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _Refusal(500, "body is not a JSON object of service parameters")
    return data


def _check_parameters(role: str, body: bytes) -> Any:
    """The decoded parameters of an Efento service call, or a refusal naming what is wrong."""
    data = _json_object(body)
    missing = [p for p in PARAMETERS[role] if p not in data]
    if missing:
        raise _Refusal(404, f"required parameter {missing[0]!r} missing")
    extra = sorted(set(data) - set(PARAMETERS[role]))
    if extra:
        raise _Refusal(500, f"unknown parameters {extra}")
    if role == MEASUREMENT:
        measurements = _json_text(data, "payload")
        _check_measurements(measurements)
        return measurements
    if role == DEVICE_INFO:
        info = _json_text(data, "deviceJson")
        serial = info.get("serialNum")
        if not isinstance(serial, str) or not SERIAL.match(serial):
            raise _Refusal(500, f"deviceJson.serialNum {serial!r} is not 12 upper-case hex digits")
        return info
    device, configuration = data["device"], data["configuration"]
    if not isinstance(device, str) or not SERIAL.match(device):
        raise _Refusal(500, f"device {device!r} is not 12 upper-case hex digits")
    if not isinstance(configuration, dict):
        raise _Refusal(500, f"configuration is a {type(configuration).__name__}, not an object")
    if configuration.get("serialNumber", device) != device:
        raise _Refusal(500, f"configuration.serialNumber is not the device {device}")
    return {"device": device, "configuration": configuration}


def _json_text(data: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = data[name]
    if not isinstance(value, str):
        raise _Refusal(500, f"{name} is a {type(value).__name__}; the seed sends JSON text")
    try:
        inner = json.loads(value)
    except ValueError as exc:
        raise _Refusal(500, f"{name} is not JSON text: {exc}") from None
    if not isinstance(inner, dict):
        raise _Refusal(500, f"{name} holds a {type(inner).__name__}, not an object")
    return inner


def _check_measurements(measurements: Mapping[str, Any]) -> None:
    rows = measurements.get("measurements")
    if not isinstance(rows, list):
        raise _Refusal(500, "payload has no measurements array")
    for index, row in enumerate(rows):
        where = f"payload.measurements[{index}]"
        if not isinstance(row, dict):
            raise _Refusal(500, f"{where} is not an object")
        for key, kind in MEASUREMENT_FIELDS.items():
            if not isinstance(row.get(key), kind) or isinstance(row.get(key), bool):
                raise _Refusal(500, f"{where}.{key} missing or not a {kind.__name__}")
        for key in ("measured_at", "next_measurement_at"):
            if not SEED_TIME.match(row[key]):
                raise _Refusal(500, f"{where}.{key} {row[key]!r} is not 'YYYY-MM-DD HH:MM:SS UTC'")
        if not SERIAL.match(row["serial"]):
            raise _Refusal(500, f"{where}.serial {row['serial']!r} is not 12 upper-case hex")
        for p, param in enumerate(row["params"]):
            if not isinstance(param, dict) or not {"value", "type", "channel"} <= set(param):
                raise _Refusal(500, f"{where}.params[{p}] lacks value, type or channel")
