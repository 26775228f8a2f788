"""The Efento codec: a /m, /i or /c payload as fieldbridge messages (readings, attributes)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from fieldbridge.codecs.efento.frames import (
    endpoint_from_meta,
    parse_config,
    parse_device_info,
    parse_measurements,
    serial_hex,
)
from fieldbridge.codecs.efento.proto.measurements_pb2 import ProtoMeasurements
from fieldbridge.codecs.efento.samples import samples
from fieldbridge.codecs.efento.seed_json import config_json, device_info_json
from fieldbridge.model import Decoded, Reading

KIND = "efento"
KIND_CONFIG_PART = "efento-config-part"  # a split /c upload's part that is not the last
HASH_ATTRIBUTE = "configuration_hash"  # the device attribute a whole /c sets
BATTERY_NOT_MEASURED = 10921  # battery_level // 6 when the sensor did not measure
POWER_SOURCES = {0: "battery", 1: "rechargeable", 2: "external"}


def decode(payload: bytes, meta: Mapping[str, Any], received_at: float) -> list[Decoded]:
    """meta["endpoint"] ('m', 'i', 'c', or a path ending in one) says what the payload is."""
    endpoint = endpoint_from_meta(meta)
    if endpoint == "m":
        return [_measurements(parse_measurements(payload))]
    if endpoint == "i":
        return [_device_info(payload)]
    return [_configuration(payload)]


def _measurements(frame: ProtoMeasurements) -> Decoded:
    device = serial_hex(frame.serial_number, "m", 1)
    readings = []
    for sample in samples(frame):
        info = sample.info
        if sample.state is not None:
            extra: dict[str, Any] | None = {"state": sample.state}
        elif sample.error_code is not None:
            extra = {"error_code": sample.error_code}
        elif sample.metadata is not None:
            extra = {"metadata": sample.metadata}
        else:
            extra = None
        value = sample.value
        readings.append(
            Reading(
                info.label,
                None if value is None else float(value),
                float(sample.at),
                sample.channel,
                info.unit,
                extra,
                f"ch{sample.channel}@{sample.at}",
            )
        )
    return Decoded(
        device=device, readings=tuple(readings), kind=KIND, attributes=measurement_attributes(frame)
    )


def measurement_attributes(frame: ProtoMeasurements) -> dict[str, Any]:
    """What a /m frame says about its sensor besides its samples (see efento-decoding.md)."""
    attributes: dict[str, Any] = {
        "battery": "ok" if frame.battery_status else "low",
        "measurement_period_base": frame.measurement_period_base,
        "measurement_period_factor": frame.measurement_period_factor,
        "transfer_reason": frame.transfer_reason,
    }
    if frame.HasField("signal"):
        attributes["signal"] = frame.signal
    if frame.next_transmission_at:
        attributes["next_transmission_at"] = frame.next_transmission_at
    if frame.HasField("configuration_hash"):
        attributes["measurement_configuration_hash"] = frame.configuration_hash
    if frame.cloud_token:
        attributes["cloud_token"] = frame.cloud_token
    if frame.HasField("extended_configuration_hash"):
        attributes["extended_configuration_hash"] = frame.extended_configuration_hash
    if frame.HasField("battery_level"):
        level = frame.battery_level
        centivolts, source = divmod(level, 6)
        attributes["battery_level"] = level
        attributes["power_source"] = POWER_SOURCES.get(source, f"unknown ({source})")
        if centivolts != BATTERY_NOT_MEASURED:
            attributes["battery_voltage"] = centivolts / 100
    return attributes


def _payload_key(endpoint: str, payload: bytes) -> str:
    # A resent identical /i or /c frame is the same message: key on the bytes.
    return f"{endpoint}:{hashlib.blake2b(payload, digest_size=8).hexdigest()}"


def _device_info(payload: bytes) -> Decoded:
    info = parse_device_info(payload)
    device = serial_hex(info.serial_number, "i", 1)
    version = info.sw_version
    attributes: dict[str, Any] = {
        "device_info": device_info_json(info),
        "firmware": f"{version >> 8:02d}.{version & 0xFF:02d}",
    }
    return Decoded(
        device=device,
        kind=KIND,
        idempotency_key=_payload_key("i", payload),
        attributes=attributes,
    )


def _configuration(payload: bytes) -> Decoded:
    config = parse_config(payload)
    device = serial_hex(config.serial_number, "c", 25)
    key = _payload_key("c", payload)
    if config.payload_split_info < 0:
        # More parts follow: journal this one, apply the configuration only when complete.
        return Decoded(device=device, kind=KIND_CONFIG_PART, idempotency_key=key, attributes={})
    attributes = {
        "configuration": config_json(config),
        HASH_ATTRIBUTE: config.configuration_hash,
    }
    return Decoded(device=device, kind=KIND, idempotency_key=key, attributes=attributes)
