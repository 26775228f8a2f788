"""Parse the bytes of an Efento CoAP payload into its protobuf message, or a DecodeError."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from google.protobuf.message import DecodeError as ProtobufDecodeError

from fieldbridge.codecs.efento.proto.config_pb2 import ProtoConfig
from fieldbridge.codecs.efento.proto.device_info_pb2 import ProtoDeviceInfo
from fieldbridge.codecs.efento.proto.measurements_pb2 import ProtoMeasurements
from fieldbridge.errors import DecodeError

Endpoint = Literal["m", "i", "c"]
ENDPOINTS: dict[str, Endpoint] = {"m": "m", "i": "i", "c": "c"}
MESSAGES = {"m": "ProtoMeasurements", "i": "ProtoDeviceInfo", "c": "ProtoConfig"}
MAX_SERIAL_BYTES = 16  # Efento serials are 6 bytes; allow some room, refuse garbage


def endpoint_of(value: object) -> Endpoint:
    """'m', '/m', 'efento/m', '/efento/m/' -> 'm'; anything else is a DecodeError."""
    if isinstance(value, str):
        segment = value.rstrip("/").rsplit("/", 1)[-1]
        found = ENDPOINTS.get(segment)
        if found is not None:
            return found
    raise DecodeError(
        f"endpoint {value!r} is not an Efento endpoint: expected m (measurements), "
        "i (device info) or c (configuration)"
    )


def endpoint_from_meta(meta: Mapping[str, Any]) -> Endpoint:
    if "endpoint" not in meta:
        raise DecodeError(
            "the transport metadata has no 'endpoint'; the Efento codec needs m, i or c"
        )
    return endpoint_of(meta["endpoint"])


def _parse(message: Any, payload: bytes, endpoint: str) -> None:
    try:
        message.ParseFromString(payload)
    except ProtobufDecodeError as exc:
        raise DecodeError(
            f"/{endpoint} payload is not a valid {MESSAGES[endpoint]} protobuf "
            f"({len(payload)} bytes): {exc}",
            malformed=True,
        ) from None


def parse_measurements(payload: bytes) -> ProtoMeasurements:
    message = ProtoMeasurements()
    _parse(message, payload, "m")
    return message


def parse_device_info(payload: bytes) -> ProtoDeviceInfo:
    message = ProtoDeviceInfo()
    _parse(message, payload, "i")
    return message


def parse_config(payload: bytes) -> ProtoConfig:
    """A /c payload; the concatenated parts of a split upload parse as one (protobuf merge)."""
    message = ProtoConfig()
    _parse(message, payload, "c")
    return message


def serial_hex(serial: bytes, endpoint: str, field: int) -> str:
    """The device id: upper-case hex of the serial bytes; refuses a missing or odd serial."""
    if not serial:
        raise DecodeError(
            f"/{endpoint} payload has no serial_number (field {field}); "
            "every Efento frame names its sensor"
        )
    if len(serial) > MAX_SERIAL_BYTES:
        raise DecodeError(
            f"/{endpoint} serial_number (field {field}) is {len(serial)} bytes; "
            f"expected 6 (at most {MAX_SERIAL_BYTES})"
        )
    return serial.hex().upper()


@dataclass(frozen=True, slots=True)
class FrameSummary:
    """What a CoAP source needs to know about a frame before it is stored."""

    serial: str  # upper-case hex
    # /m: field 9 (None when the frame has none); /c: field 21; /i: None.
    configuration_hash: int | None
    # /c: field 44 (0 = not split, < 0 = more parts follow, > 0 = last part); else None.
    split_info: int | None
    # The token the frame carries in its payload (/m and /i field 16; /c field 24 when
    # cloud_token_config is 1); None when empty or not sent.
    cloud_token: str | None


CLOUD_TOKEN_CONFIG_USE_TOKEN = 1


def summary(endpoint: str, payload: bytes) -> FrameSummary:
    """Serial, configuration hash, split info and cloud token of a frame; DecodeError if bad."""
    which = endpoint_of(endpoint)
    if which == "m":
        measurements = parse_measurements(payload)
        return FrameSummary(
            serial=serial_hex(measurements.serial_number, "m", 1),
            configuration_hash=(
                measurements.configuration_hash
                if measurements.HasField("configuration_hash")
                else None
            ),
            split_info=None,
            cloud_token=measurements.cloud_token or None,
        )
    if which == "i":
        info = parse_device_info(payload)
        return FrameSummary(
            serial=serial_hex(info.serial_number, "i", 1),
            configuration_hash=None,
            split_info=None,
            cloud_token=info.cloud_token or None,
        )
    config = parse_config(payload)
    token = (
        config.cloud_token or None
        if config.cloud_token_config == CLOUD_TOKEN_CONFIG_USE_TOKEN
        else None
    )
    return FrameSummary(
        serial=serial_hex(config.serial_number, "c", 25),
        configuration_hash=config.configuration_hash,
        split_info=config.payload_split_info,
        cloud_token=token,
    )
