"""The ThingWorx service-call bodies of Efento frames, and the RemoteConfiguration of an answer.

Pure: values in, values out (spec integrations.md §5.2). The shapes are the seed server's, kept
exactly: the measurement `payload` and the `deviceJson` are JSON *text* inside the JSON body,
the `configuration` is a nested object.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Literal

from fieldbridge.codecs import efento
from fieldbridge.codecs.efento import Endpoint, endpoint_of
from fieldbridge.errors import DecodeError
from fieldbridge.model import JournalEntry

Role = Literal["measurement", "configuration", "device_info"]
MEASUREMENT: Role = "measurement"
CONFIGURATION: Role = "configuration"
DEVICE_INFO: Role = "device_info"
ROLES: dict[Endpoint, Role] = {"m": MEASUREMENT, "c": CONFIGURATION, "i": DEVICE_INFO}

# Keys of a RemoteConfiguration the seed did not copy into the ProtoConfig.
NOT_CONFIGURATION = frozenset({"serialNumber", "flag"})
# Set by the Efento source on a /c message it assembled from the parts of a split upload.
SPLIT_PARTS = "split_parts"


@dataclass(frozen=True, slots=True)
class ServiceCall:
    """One service call: which service (by the frame's endpoint) and the JSON body."""

    endpoint: Endpoint
    role: Role
    params: dict[str, Any]

    @property
    def body(self) -> bytes:
        # json.dumps, as the seed's requests.post(json=...) did; NaN is not JSON.
        return json.dumps(self.params, allow_nan=False).encode()


def render_call(entry: JournalEntry) -> ServiceCall | None:
    """The call for a stored Efento frame, None when it is not a whole configuration (nothing
    to send), or DecodeError if the message is not an Efento frame."""
    if entry.kind == efento.KIND_CONFIG_PART:
        return None  # the last part's message carries the whole configuration
    endpoint = endpoint_of(entry.meta.get("endpoint"))
    payload = entry.payload
    if endpoint == "m":
        measurements = efento.to_json("m", payload)
        return ServiceCall(endpoint, MEASUREMENT, {"payload": _text(measurements)})
    if endpoint == "c":
        frame = efento.summary("c", payload)
        if (frame.split_info or 0) > 1 and SPLIT_PARTS not in entry.meta:
            return None  # the last part alone: the source lost earlier parts and asks again
        configuration = efento.to_json("c", payload)
        device = frame.serial
        return ServiceCall(
            endpoint, CONFIGURATION, {"device": device, "configuration": configuration}
        )
    info = efento.to_json("i", payload)
    info["serialNum"] = _hex_serial(info.get("serialNum"))
    return ServiceCall(endpoint, DEVICE_INFO, {"deviceJson": _text(info)})


def _text(value: dict[str, Any]) -> str:
    return json.dumps(value, allow_nan=False)


def _hex_serial(serial: object) -> str:
    """The seed sent /i's serialNum as upper-case hex, not the protobuf JSON base64."""
    try:
        raw = base64.b64decode(serial, validate=True) if isinstance(serial, str) else b""
    except (binascii.Error, ValueError):
        raw = b""
    if not raw:
        raise DecodeError(f"/i serialNum {serial!r} is not the base64 of a serial")
    return raw.hex().upper()


def remote_configuration(body: bytes) -> dict[str, Any] | None:
    """The configuration changes a measurement-service answer asks for, or None.

    As the seed: the answer is a JSON object with "status": 200 and a "RemoteConfiguration"
    object; "serialNumber" and "flag" are not settings, and a null means "leave unchanged".
    An InfoTable answer ({"rows": [{"result": {...}}]}, a service with a JSON output) is
    unwrapped first. Anything else (empty, not JSON, another status) asks for nothing.
    """
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return None
    data = _unwrap_infotable(data)
    if not isinstance(data, dict) or data.get("status") != 200:
        return None
    remote = data.get("RemoteConfiguration")
    if not isinstance(remote, dict):
        return None
    fields = {k: v for k, v in remote.items() if k not in NOT_CONFIGURATION and v is not None}
    return fields or None


def _unwrap_infotable(data: object) -> object:
    if not isinstance(data, dict) or "status" in data:
        return data
    rows = data.get("rows")
    if isinstance(rows, list) and rows and isinstance(rows[0], dict) and "result" in rows[0]:
        result = rows[0]["result"]
        if isinstance(result, str):
            try:
                return json.loads(result)
            except ValueError:
                return None
        return result
    return data
