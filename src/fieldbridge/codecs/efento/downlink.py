"""Build a ProtoConfig downlink from field names and values, refusing what a server cannot send."""

from __future__ import annotations

import base64
import binascii
import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from google.protobuf.descriptor import Descriptor
from google.protobuf.json_format import ParseDict, ParseError
from google.protobuf.message import DecodeError as ProtobufDecodeError

from fieldbridge.codecs.efento.proto.config_pb2 import (
    ProtoBleAdvertisingPeriod,
    ProtoCalendar,
    ProtoCalibrationParametersRequest,
    ProtoConfig,
    ProtoNetworkSearch,
    ProtoOutputControlState,
    ProtoRule,
)
from fieldbridge.codecs.efento.seed_json import CONFIG_LEGACY_NAMES
from fieldbridge.errors import DecodeError

U32 = 0xFFFFFFFF
OFF = 0xFFFFFFFF  # the "disabled / always" sentinel of several periods
S32_MIN, S32_MAX = -(2**31), 2**31 - 1
DEL = "\x7f"  # Efento's "automatic / not used" for strings and bytes

# Sent only by the sensor (spec §2.4, §6.7 direction D): a downlink must not carry them.
DEVICE_ONLY = frozenset(
    {
        "serial_number",
        "configuration_hash",
        "configuration_hash_timestamp",
        "configuration_errors",
        "configuration_error_timestamp",
        "channel_types",
        "payload_split_info",
    }
)

Check = Callable[[str, Any], Any]
"""(name for messages, value) -> the value as json_format.ParseDict takes it; ValueError if bad."""


def _is_int(value: Any) -> bool:
    return type(value) is int


def uint(lo: int, hi: int, *also: int, unit: str = "") -> Check:
    allowed = f"{lo}..{hi}" + "".join(f" or {v}" for v in also) + (f" ({unit})" if unit else "")

    def check(name: str, value: Any) -> int:
        if not _is_int(value):
            raise ValueError(f"{name}: must be an integer {allowed}, got {value!r}")
        if not (lo <= value <= hi or value in also):
            raise ValueError(f"{name}: {value} is out of range; allowed {allowed}")
        return int(value)

    return check


def one_of(values: Mapping[int, str]) -> Check:
    allowed = ", ".join(f"{k} ({v})" for k, v in values.items())

    def check(name: str, value: Any) -> int:
        if not _is_int(value) or value not in values:
            raise ValueError(f"{name}: must be one of {allowed}, got {value!r}")
        return int(value)

    return check


def enum(names: Mapping[str, int], lo: int) -> Check:
    """An enum by number or by its name (as `decode efento --endpoint c` prints it)."""
    hi = max(names.values())
    listed = ", ".join(n for n, v in names.items() if v >= lo)

    def check(name: str, value: Any) -> int:
        if isinstance(value, str) and value in names:
            value = names[value]
        if not _is_int(value) or not lo <= value <= hi:
            raise ValueError(f"{name}: must be {lo}..{hi} or one of {listed}, got {value!r}")
        return int(value)

    return check


def flag(name: str, value: Any) -> bool:
    if value is not True:
        raise ValueError(
            f"{name}: a request flag can only be true (false is not sent in proto3; "
            "leave the field out instead)"
        )
    return True


def text(max_len: int, *, what: str = "") -> Check:
    def check(name: str, value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise ValueError(
                f"{name}: must be a non-empty string{what}, got {value!r} "
                f'(use "\\u007f" for "automatic/not used")'
            )
        if len(value) > max_len:
            raise ValueError(f"{name}: {len(value)} characters; at most {max_len} allowed")
        return value

    return check


def blob(max_len: int) -> Check:
    def check(name: str, value: Any) -> str:
        try:
            data = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
        except (binascii.Error, ValueError):
            data = b""
        if not 1 <= len(data) <= max_len:
            raise ValueError(
                f"{name}: must be base64 of 1..{max_len} bytes (as decode prints it; "
                f'"fw==" is 0x7F = disabled), got {value!r}'
            )
        return base64.b64encode(data).decode()

    return check


def numbers(item: Check, *, min_len: int = 1, max_len: int = 64) -> Check:
    def check(name: str, value: Any) -> list[Any]:
        if not isinstance(value, list) or not min_len <= len(value) <= max_len:
            size = f"{min_len}" if min_len == max_len else f"{min_len}..{max_len}"
            raise ValueError(f"{name}: must be a list of {size} items, got {value!r}")
        return [item(f"{name}[{i}]", v) for i, v in enumerate(value)]

    return check


def message(descriptor: Descriptor, checks: Mapping[str, Check]) -> Check:
    names = _names(descriptor)

    def check(name: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise ValueError(f"{name}: must be an object, got {value!r}")
        out: dict[str, Any] = {}
        for key, item in value.items():
            field = names.get(key)
            if field is None:
                known = ", ".join(f.name for f in descriptor.fields)
                raise ValueError(f"{name}.{key}: unknown field (known: {known})")
            out[field] = checks[field](f"{name}.{key}", item)
        return out

    return check


def messages(descriptor: Descriptor, checks: Mapping[str, Check], max_len: int) -> Check:
    one = message(descriptor, checks)

    def check(name: str, value: Any) -> list[dict[str, Any]]:
        if not isinstance(value, list) or not 1 <= len(value) <= max_len:
            raise ValueError(
                f"{name}: must be a list of 1..{max_len} objects (positional slots; "
                "{} keeps a slot unchanged), got {value!r}"
            )
        return [one(f"{name}[{i}]", v) for i, v in enumerate(value)]

    return check


def _names(descriptor: Descriptor) -> dict[str, str]:
    out: dict[str, str] = {}
    for field in descriptor.fields:
        out[field.name] = field.name
        out[field.json_name] = field.name
    return out


def _enum_names(descriptor: Descriptor, field: str) -> dict[str, int]:
    enum_type = descriptor.fields_by_name[field].enum_type
    assert enum_type is not None, field
    return {v.name: v.number for v in enum_type.values}


S32 = uint(S32_MIN, S32_MAX)
PARAMS = numbers(S32, max_len=32)
BYTE = uint(0, 255)
PORT = uint(1, 65535)
COAP_OPTION = uint(1, 65000, unit="CoAP option number; 65000 = in the payload / not sent")
ENDPOINT = text(11, what=" (one Uri-Path segment)")
ANY_TEXT = text(255)

RULE = messages(
    ProtoRule.DESCRIPTOR,
    {
        "channel_mask": uint(0, 0x3F, unit="bit 0 = channel 1 .. bit 5 = channel 6"),
        "condition": enum(_enum_names(ProtoRule.DESCRIPTOR, "condition"), 0),
        "parameters": PARAMS,
        "action": enum(_enum_names(ProtoRule.DESCRIPTOR, "action"), 0),
    },
    max_len=16,
)
CALENDAR = messages(
    ProtoCalendar.DESCRIPTOR,
    {
        "rule_mask": uint(0, 0xFFFF, unit="bit i = rule i+1"),
        "parameters": PARAMS,
        "type": enum(_enum_names(ProtoCalendar.DESCRIPTOR, "type"), 0),
    },
    max_len=6,
)
OUTPUT_CONTROL = messages(
    ProtoOutputControlState.DESCRIPTOR,
    {
        "channel_index": uint(0, 5, unit="channel 1..6 as 0..5"),
        "channel_state": one_of({1: "off", 2: "on"}),
    },
    max_len=3,
)
ADVERTISING = message(
    ProtoBleAdvertisingPeriod.DESCRIPTOR,
    {
        "mode": enum(_enum_names(ProtoBleAdvertisingPeriod.DESCRIPTOR, "mode"), 1),
        "normal": uint(32, 16384, unit="0.625 ms steps"),
        "fast": uint(32, 16384, unit="0.625 ms steps"),
    },
)
NETWORK_SEARCH = message(
    ProtoNetworkSearch.DESCRIPTOR,
    {
        "time_schema_last_registration_ok": numbers(uint(1, 255), min_len=6, max_len=6),
        "time_schema_last_registration_not_ok": numbers(uint(1, 255), min_len=6, max_len=6),
        "disable_period_base": uint(1, 255, unit="minutes"),
        "counter_max": uint(1, 255),
    },
)
CALIBRATION = message(
    ProtoCalibrationParametersRequest.DESCRIPTOR,
    {
        "calibration_request": uint(0, U32),
        "channel_assignment": uint(0, U32),
        "parameters": numbers(S32, min_len=0, max_len=8),
    },
)


def _nvm_status(name: str, value: Any) -> int:
    if value != 0x7F or not _is_int(value):
        raise ValueError(
            f"{name}: device-only field (the sensor reports its NvM status); a server may only "
            "send 127 (0x7F) to clear it"
        )
    return 0x7F


# Every server-settable ProtoConfig field (spec §6.7 directions S and B) and its range.
CHECKS: dict[str, Check] = {
    "measurement_period_base": uint(1, 65535, unit="seconds"),
    "transmission_interval": uint(60, 604800, unit="seconds"),
    "ble_turnoff_time": uint(60, 604800, OFF, unit="seconds; 4294967295 = always on"),
    "ack_interval": uint(180, 2592000, OFF, unit="seconds; 4294967295 = every message"),
    "device_info_request": flag,
    "update_software_request": flag,
    "current_time": uint(1, U32, unit="Unix seconds"),
    "transfer_limit": uint(1, 65535, unit="65535 = off"),
    "transfer_limit_timer": uint(1, 65535, unit="seconds; 65535 = off"),
    "data_server_ip": text(31, what=" (address or host name)"),
    "data_server_port": PORT,
    "update_server_ip": text(31, what=" (address or host name)"),
    "update_server_port_udp": PORT,
    "update_server_port_coap": PORT,
    "apn": text(49),
    "plmn_selection": uint(100, 999999, 1000000, OFF, unit="1000000 = automatic"),
    "disable_modem_request": uint(60, 604800, unit="seconds"),
    "configuration_request": flag,
    "accept_without_testing_request": flag,
    "cloud_token_config": one_of({1: "use cloud_token", 2: "use the IMEI", 255: "no token"}),
    "cloud_token": text(36),
    "measurement_period_factor": uint(1, 65535),
    "rules": RULE,
    "supervision_period": uint(180, 604800, OFF, unit="seconds; 4294967295 = off"),
    "reset_memory_request": flag,
    "modem_bands_mask": uint(1, 0x7FFFF, unit="bits 0..18"),
    "data_endpoint": ENDPOINT,
    "configuration_endpoint": ENDPOINT,
    "device_info_endpoint": ENDPOINT,
    "time_endpoint": ENDPOINT,
    "ble_tx_power_level": uint(1, 4),
    "clear_runtime_errors_request": flag,
    "cloud_token_coap_option": COAP_OPTION,
    "payload_signature_coap_option": COAP_OPTION,
    "dns_server_ip": numbers(BYTE, min_len=4, max_len=4),
    "dns_ttl_config": uint(1, 864002, unit="seconds; 864001 = server TTL, 864002 = on failure"),
    "update_modem_request": text(48, what=" (DFOTA URL)"),
    "cellular_config_params": numbers(uint(0, U32), max_len=16),
    "calendars": CALENDAR,
    "calibration_parameters_request": CALIBRATION,
    "led_config": numbers(BYTE, min_len=9, max_len=9),
    "network_troubleshooting": one_of({1: "off", 2: "on"}),
    "modem_identification_coap_option": COAP_OPTION,
    "network_key": blob(16),
    "encryption_key": blob(16),
    "apn_username": ANY_TEXT,
    "apn_password": ANY_TEXT,
    "network_search": NETWORK_SEARCH,
    "set_output_control_state_request": OUTPUT_CONTROL,
    "ble_advertising_period": ADVERTISING,
    "advertisement_manufacturer_data_format": enum(
        _enum_names(ProtoConfig.DESCRIPTOR, "advertisement_manufacturer_data_format"), 1
    ),
    "extended_configuration_endpoint": ENDPOINT,
    "nvm_status": _nvm_status,
    "extended_configuration_request": flag,
    "restart_memory_stats_request": flag,
    "data_transfer_start_timestamp_request": uint(1, U32, unit="Unix seconds"),
}


def _snake(camel: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).lower()


def _config_names() -> dict[str, str]:
    """Every accepted name -> the proto field: 07.xx snake and camel, 06.xx snake and camel."""
    names = _names(ProtoConfig.DESCRIPTOR)
    for field in ProtoConfig.DESCRIPTOR.fields:
        legacy = CONFIG_LEGACY_NAMES.get(field.json_name)
        if legacy is not None:
            names[legacy] = field.name
            names[_snake(legacy)] = field.name
    return names


NAMES = _config_names()
assert set(CHECKS) | DEVICE_ONLY == set(NAMES.values()), "every ProtoConfig field is classified"


def encode_config(fields: Mapping[str, Any]) -> bytes:
    """A ProtoConfig downlink carrying `fields` (absent = unchanged on the sensor).

    Names: as `to_json("c", ...)` prints them, or the proto field names (07.xx or 06.xx).
    Raises ValueError naming the field for device-only or unknown fields and bad values.
    """
    if not fields:
        raise ValueError("no fields: a downlink must carry at least one setting or request")
    normalized: dict[str, Any] = {}
    for name, value in fields.items():
        field = NAMES.get(name) if isinstance(name, str) else None
        if field is None:
            close = difflib.get_close_matches(str(name), list(NAMES), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{name}: unknown ProtoConfig field{hint}")
        if field in DEVICE_ONLY:
            raise ValueError(
                f"{name}: device-only field (the sensor reports it; a downlink must not "
                "carry it, spec §2.4)"
            )
        if field in normalized:
            raise ValueError(f"{name}: given twice (as {field} and another name)")
        if value is None:
            raise ValueError(f"{name}: null cannot be sent; leave the field out to keep it")
        normalized[field] = CHECKS[field](name, value)
    config = ProtoConfig()
    try:
        ParseDict(normalized, config)
    except ParseError as exc:  # the checks above should make this unreachable
        raise ValueError(f"configuration does not fit ProtoConfig: {exc}") from None
    return config.SerializeToString(deterministic=True)


# ProtoConfig fields that ask for something or set the clock; they leave the configuration
# (and so its hash) as it is. Every other field changes the configuration.
REQUEST_FIELDS = frozenset(
    {
        "device_info_request",
        "configuration_request",
        "extended_configuration_request",
        "update_software_request",
        "clear_runtime_errors_request",
        "reset_memory_request",
        "restart_memory_stats_request",
        "disable_modem_request",
        "update_modem_request",
        "data_transfer_start_timestamp_request",
        "set_output_control_state_request",
        "calibration_parameters_request",
        "accept_without_testing_request",
        "current_time",
    }
)


def changes_configuration(payload: bytes) -> bool:
    """Whether a ProtoConfig downlink sets a setting (so the sensor's hash will change)."""
    config = ProtoConfig()
    try:
        config.ParseFromString(payload)
    except ProtobufDecodeError:
        return False
    return any(field.name not in REQUEST_FIELDS for field, _ in config.ListFields())


def is_config(payload: bytes) -> bool:
    """Whether a payload parses as a ProtoConfig (a queued downlink could be anything)."""
    try:
        ProtoConfig().ParseFromString(payload)
    except ProtobufDecodeError:
        return False
    return True


def merge_configs(payloads: Sequence[bytes]) -> bytes:
    """ProtoConfig payloads as one, later ones winning field by field (a later `rules` list
    replaces an earlier one; concatenating the bytes would append to it).

    Raises DecodeError when a payload is no ProtoConfig.
    """
    merged = ProtoConfig()
    for payload in payloads:
        part = ProtoConfig()
        try:
            part.ParseFromString(payload)
        except ProtobufDecodeError as exc:
            raise DecodeError(f"a downlink payload is not a ProtoConfig: {exc}") from None
        for field, _ in part.ListFields():
            merged.ClearField(field.name)  # type: ignore[arg-type]  # a name from the descriptor
        merged.MergeFrom(part)
    return merged.SerializeToString(deterministic=True)


def answer_payload(
    downlinks: Sequence[bytes], now: float, *, configuration_request: bool
) -> bytes | None:
    """The ProtoConfig of a 2.01: queued downlinks merged with the clock (`now`) and maybe a
    configuration request; None when there is nothing to say. DecodeError: see merge_configs."""
    if not downlinks and not configuration_request:
        return None
    extra: dict[str, object] = {"current_time": int(now)}
    if configuration_request:
        extra["configuration_request"] = True
    return merge_configs([*downlinks, encode_config(extra)])
