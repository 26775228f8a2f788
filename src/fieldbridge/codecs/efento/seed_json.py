"""Efento frames as the seed server's JSON (spec §3.3, §4.5), optionally with its two bugs."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from fieldbridge.codecs.efento.frames import (
    endpoint_of,
    parse_config,
    parse_device_info,
    parse_measurements,
    serial_hex,
)
from fieldbridge.codecs.efento.proto.config_pb2 import ProtoConfig
from fieldbridge.codecs.efento.proto.device_info_pb2 import ProtoDeviceInfo
from fieldbridge.codecs.efento.proto.measurements_pb2 import ProtoMeasurements
from fieldbridge.codecs.efento.samples import samples

# The seed printed Lisbon local time and called it UTC (spec §3.2); seed_compat repeats that.
SEED_ZONE = "Europe/Lisbon"

# 07.xx JSON name -> the 06.xx name the seed printed (spec §3.3); same wire field.
CONFIG_LEGACY_NAMES = {
    "configurationErrors": "errors",
    "configurationHash": "hash",
    "configurationErrorTimestamp": "errorTimestamp",
    "configurationHashTimestamp": "hashTimestamp",
    "deviceInfoRequest": "requestDeviceInfo",
    "configurationRequest": "requestConfiguration",
    "updateSoftwareRequest": "requestFwUpdate",
    "acceptWithoutTestingRequest": "acceptWithoutTesting",
    "resetMemoryRequest": "memoryResetRequest",
    "clearRuntimeErrorsRequest": "requestRuntimeErrorsClear",
    "updateModemRequest": "modemUpdateRequest",
    "apnUsername": "apnUserName",
}
DEVICE_INFO_LEGACY_NAMES = {"serialNumber": "serialNum"}
RUNTIME_LEGACY_NAMES = {"batteryVoltage": "minBatteryVoltage"}


def to_json(endpoint: str, payload: bytes, *, seed_compat: bool = False) -> dict[str, Any]:
    """The seed-style JSON of a frame: /m rows, /i and /c MessageToDict with 06.xx names.

    seed_compat=True repeats the seed's two bugs in /m (Lisbon time labelled UTC, signal 0);
    /i and /c are the same either way. Raises DecodeError for bytes that are not a frame.
    """
    which = endpoint_of(endpoint)
    if which == "m":
        return {"measurements": measurement_rows(parse_measurements(payload), seed_compat)}
    if which == "i":
        return device_info_json(parse_device_info(payload))
    return config_json(parse_config(payload))


def measurement_rows(frame: ProtoMeasurements, seed_compat: bool = False) -> list[dict[str, Any]]:
    serial = serial_hex(frame.serial_number, "m", 1)
    signal = 0 if seed_compat else frame.signal
    battery = "ok" if frame.battery_status else "low"
    clock = _seed_time if seed_compat else _utc_time
    groups: dict[tuple[int, int], list[dict[str, Any]]] = {}
    # Samples come channel by channel, so each group's params are in channel order already.
    for sample in samples(frame):
        if sample.state is not None:
            param: dict[str, Any] = {"value": sample.state}
        else:
            param = {"value": sample.value}
        param["type"] = sample.info.label
        param["channel"] = sample.channel
        if sample.error_code is not None:
            param["error_code"] = sample.error_code
        elif sample.metadata is not None:
            param["metadata"] = sample.metadata
        groups.setdefault((sample.at, sample.interval), []).append(param)
    return [
        {
            "measured_at": clock(at),
            "serial": serial,
            "next_measurement_at": clock(at + interval),
            "signal": signal,
            "measurement_interval": interval,
            "batteryStatus": battery,
            "params": params,
        }
        for (at, interval), params in sorted(groups.items(), key=lambda item: item[0])
    ]


def _utc_time(ts: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _seed_time(ts: int) -> str:
    return datetime.fromtimestamp(ts, ZoneInfo(SEED_ZONE)).strftime("%Y-%m-%d %H:%M:%S UTC")


def _renamed(data: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    return {names.get(key, key): value for key, value in data.items()}


def _message_dict(message: Message) -> dict[str, Any]:
    # Plain MessageToDict: camelCase names, defaults omitted, enums by name, field-number order.
    return MessageToDict(message)


def device_info_json(info: ProtoDeviceInfo) -> dict[str, Any]:
    """/i as the seed printed it: the serial stays base64, 06.xx names (spec §3.3)."""
    data = _renamed(_message_dict(info), DEVICE_INFO_LEGACY_NAMES)
    runtime = data.get("runtimeInfo")
    if isinstance(runtime, dict):
        data["runtimeInfo"] = _renamed(runtime, RUNTIME_LEGACY_NAMES)
    return data


def config_json(config: ProtoConfig) -> dict[str, Any]:
    """/c as the seed printed it: the serial as upper-case hex, 06.xx names (spec §3.3)."""
    data = _renamed(_message_dict(config), CONFIG_LEGACY_NAMES)
    if "serialNumber" in data:
        data["serialNumber"] = config.serial_number.hex().upper()
    return data
