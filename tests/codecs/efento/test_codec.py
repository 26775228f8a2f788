"""The Efento codec: spec vectors, the seed frames, every measurement type, /c splits, downlinks."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest

from fieldbridge.codecs import CODECS
from fieldbridge.codecs.efento import (
    KIND_CONFIG_PART,
    Incomplete,
    Missing,
    Part,
    SplitUploads,
    Whole,
    answer_payload,
    decode,
    encode_config,
    is_config,
    part_index,
    summary,
    to_json,
)
from fieldbridge.codecs.efento.downlink import DEVICE_ONLY
from fieldbridge.codecs.efento.proto.config_pb2 import ProtoConfig, ProtoRule
from fieldbridge.codecs.efento.proto.device_info_pb2 import ProtoDeviceInfo
from fieldbridge.codecs.efento.proto.measurements_pb2 import ProtoChannel, ProtoMeasurements
from fieldbridge.codecs.efento.samples import MAX_SAMPLES
from fieldbridge.errors import DecodeError
from fieldbridge.model import Decoded, Reading
from tests.support import paths

FIXTURES = paths.FIXTURES / "efento"
VECTORS: list[dict[str, Any]] = json.loads((FIXTURES / "vectors.json").read_text())
SEED: list[dict[str, Any]] = json.loads((FIXTURES / "seed_frames.json").read_text())["frames"]
RECEIVED = 1_717_300_000.0
SERIAL = bytes.fromhex("282c0241a0ff")
DEVICE = "282C0241A0FF"
T = 1_717_243_200  # 2024-06-01 12:00:00 UTC


def seed_hex(endpoint: str) -> bytes:
    return bytes.fromhex(next(f["hex"] for f in SEED if f["endpoint"] == endpoint))


def seed_output(endpoint: str) -> Any:
    return json.loads(next(f["seed_output"] for f in SEED if f["endpoint"] == endpoint))


def channel(kind: int, offsets: Sequence[int], start: int = 0, at: int = T) -> ProtoChannel:
    return ProtoChannel(type=kind, timestamp=at, start_point=start, sample_offsets=offsets)


def frame(*channels: ProtoChannel, base: int = 60, factor: int = 1, **fields: Any) -> bytes:
    """A /m payload built with our generated ProtoMeasurements."""
    fields.setdefault("battery_status", True)
    message = ProtoMeasurements(
        serial_number=SERIAL,
        measurement_period_base=base,
        measurement_period_factor=factor,
        **fields,
    )
    message.channels.extend(channels)
    return message.SerializeToString()


def rows(payload: bytes) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = to_json("m", payload)["measurements"]
    return out


def params(payload: bytes) -> list[tuple[str, Any, int]]:
    """(time of day, value, channel) of every param, row by row."""
    return [
        (row["measured_at"][11:19], p["value"], p["channel"])
        for row in rows(payload)
        for p in row["params"]
    ]


def one(payload: bytes, endpoint: str = "m") -> Decoded:
    out = decode(payload, {"endpoint": endpoint}, RECEIVED)
    assert len(out) == 1
    return out[0]


def refusal(payload: bytes, endpoint: str = "m") -> DecodeError:
    with pytest.raises(DecodeError) as caught:
        decode(payload, {"endpoint": endpoint}, RECEIVED)
    return caught.value


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 63)


# --- public vectors and the seed ---------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector_decodes_to_its_expected_json_exactly(vector: dict[str, Any]) -> None:
    out = to_json(vector["endpoint"], bytes.fromhex(vector["hex"]))
    # Same values, same types (21.5 vs 45), same key order.
    assert json.dumps(out) == json.dumps(vector["expected"])


@pytest.mark.parametrize("endpoint", ["m", "i", "c"])
def test_seed_frames_in_seed_compat_mode_are_byte_identical_to_the_seed(endpoint: str) -> None:
    frame_ = next(f for f in SEED if f["endpoint"] == endpoint)
    out = to_json(endpoint, bytes.fromhex(frame_["hex"]), seed_compat=True)
    assert json.dumps(out) == frame_["seed_output"]


def test_seed_measurement_canonical_differs_only_in_time_zone_and_signal() -> None:
    canonical = to_json("m", seed_hex("m"))["measurements"]
    seed = seed_output("m")["measurements"]
    assert len(canonical) == len(seed) == 25

    def utc(text: str) -> datetime:
        return datetime.strptime(text, "%Y-%m-%d %H:%M:%S UTC")

    for ours, theirs in zip(canonical, seed, strict=True):
        # The seed printed Lisbon summer time (UTC+1) labelled UTC, and signal 0.
        for key in ("measured_at", "next_measurement_at"):
            assert utc(theirs[key]) - utc(ours[key]) == timedelta(hours=1)
        assert (ours["signal"], theirs["signal"]) == (12, 0)
        same = {"measured_at", "next_measurement_at", "signal"}
        assert {k: v for k, v in ours.items() if k not in same} == {
            k: v for k, v in theirs.items() if k not in same
        }
        assert list(ours) == list(theirs)
    assert canonical[0]["measured_at"] == "2023-09-06 13:17:20 UTC"


@pytest.mark.parametrize("endpoint", ["i", "c"])
def test_seed_info_and_config_are_the_same_in_both_modes(endpoint: str) -> None:
    assert to_json(endpoint, seed_hex(endpoint)) == seed_output(endpoint)


def test_seed_frames_as_messages() -> None:
    m = one(seed_hex("m"))
    assert (m.device, m.kind, m.idempotency_key, len(m.readings)) == (
        "282C024156AF",
        "efento",
        None,
        25,
    )
    assert m.readings[0] == Reading(
        "open-close", 0.0, 1694006240.0, 1, None, {"state": "OK"}, "ch1@1694006240"
    )
    assert m.readings[-1].measured_at == 1694006240 + 480
    assert m.attributes == {
        "battery": "ok",
        "measurement_period_base": 20,
        "measurement_period_factor": 1,
        "transfer_reason": 20,
        "signal": 12,
        "next_transmission_at": 1694007212,
        "measurement_configuration_hash": 119,
    }
    i = one(seed_hex("i"), "/i")
    assert (i.device, i.kind, i.readings) == ("282C024156AF", "efento", ())
    assert i.attributes is not None
    assert i.attributes["firmware"] == "06.10"
    assert i.attributes["device_info"] == seed_output("i")
    c = one(seed_hex("c"), "efento/c")
    assert (c.device, c.kind) == ("282C0240FD34", "efento")
    assert c.attributes == {"configuration": seed_output("c"), "configuration_hash": 204}


def test_info_and_config_are_keyed_on_their_bytes_measurements_on_their_samples() -> None:
    i1, i2 = one(seed_hex("i"), "i"), one(seed_hex("i"), "i")
    assert i1.idempotency_key == i2.idempotency_key
    assert i1.idempotency_key is not None and i1.idempotency_key.startswith("i:")
    other = ProtoDeviceInfo(serial_number=SERIAL, sw_version=0x0702).SerializeToString()
    assert one(other, "i").idempotency_key != i1.idempotency_key
    c = one(seed_hex("c"), "c")
    assert c.idempotency_key is not None and c.idempotency_key.startswith("c:")
    # A resent /m is a new message, but its readings have the same keys (the store keeps one).
    first, again = one(seed_hex("m")), one(seed_hex("m"))
    assert first.idempotency_key is None
    assert [r.key for r in first.readings] == [r.key for r in again.readings]
    assert len({r.key for r in first.readings}) == 25


# --- endpoints and registration -----------------------------------------------------------------


def test_codec_is_registered_as_efento() -> None:
    assert CODECS["efento"]({}) is decode
    with pytest.raises(ValueError, match="takes no options"):
        CODECS["efento"]({"x": 1})


@pytest.mark.parametrize("endpoint", ["m", "/m", "efento/m", "/efento/m/"])
def test_endpoint_is_the_last_path_segment(endpoint: str) -> None:
    assert one(seed_hex("m"), endpoint).device == "282C024156AF"


@pytest.mark.parametrize("endpoint", ["t", "/x", "", "mm", None, 3])
def test_unknown_endpoint_is_named(endpoint: object) -> None:
    with pytest.raises(DecodeError, match="not an Efento endpoint") as caught:
        decode(seed_hex("m"), {"endpoint": endpoint}, RECEIVED)
    assert repr(endpoint) in caught.value.reason
    with pytest.raises(DecodeError, match="no 'endpoint'"):
        decode(seed_hex("m"), {}, RECEIVED)


# --- every measurement type (spec §5) ---------------------------------------------------------

# type, label, unit, start_point, offset, expected value, expected metadata
CONTINUOUS = [
    (1, "temperature", "°C", 200, 17, 21.7, None),
    (1, "temperature", "°C", -2732, 0, -273.2, None),
    (2, "humidity", "%RH", 40, 5, 45, None),
    (3, "atmospheric_pressure", "hPa", 10132, 1, 1013.3, None),
    (4, "differential_pressure", "Pa", -100, -5, -105, None),
    (6, "iaq", "IAQ", 150, 1, 50, 1),
    (8, "pulse_cnt", "pulses", 10, 2, 12, None),
    (9, "electricity_meter", "Wh", 500, 0, 500, None),
    (10, "water_meter", "l", 7, 0, 7, None),
    (11, "soil_moisture", "kPa", -300, -1, -301, None),
    (12, "co_gas", "ppm", 4, 0, 4, None),
    (13, "no2_gas", "ppm", 2, 0, 2, None),
    (14, "h2s_gas", "ppm", 123, 0, 1.23, None),
    (15, "ambient_light", "lx", 5005, 0, 500.5, None),
    (16, "pm_1_0", "µg/m³", 3, 0, 3, None),
    (17, "pm_2_5", "µg/m³", 8, 0, 8, None),
    (18, "pm_10_0", "µg/m³", 12, 0, 12, None),
    (19, "noise_level", "dB", 453, 0, 45.3, None),
    (20, "nh3_gas", "ppm", 1, 0, 1, None),
    (21, "ch4_gas", "ppm", 9, 0, 9, None),
    (22, "high_pressure", "kPa", 150000, 0, 150000, None),
    (23, "distance_mm", "mm", 1234, 0, 1234, None),
    (24, "water_meter_acc_minor", "l", 99 * 6 + 1, 0, 99, 1),
    (25, "water_meter_acc_major", "hl", 1234 * 4 + 2, 0, 1234, 2),
    (26, "co2_gas", "ppm", 412 * 3 + 1, 0, 412, 1),
    (27, "humidity_accurate", "%RH", 456, 0, 45.6, None),
    (28, "static_iaq", "sIAQ", 75 * 3 + 2, 0, 75, 2),
    (29, "co2_equivalent", "ppm", 600 * 3, 0, 600, 0),
    (30, "breath_voc", "ppm", 3 * 3 + 1, 0, 3, 1),
    (31, "shared_modem", None, 5, 0, 5, None),
    (32, "percentage", "%", 5025, 0, 50.25, None),
    (33, "voltage", "mV", 33005, 0, 3300.5, None),
    (34, "current", "mA", 1234, 0, 12.34, None),
    (35, "pulse_cnt_acc_minor", "pulses", 999 * 6 + 5, 0, 999, 5),
    (36, "pulse_cnt_acc_major", "kilopulses", 77 * 4 + 3, 0, 77, 3),
    (37, "elec_meter_acc_minor", "Wh", 500 * 6, 0, 500, 0),
    (38, "elec_meter_acc_major", "kWh", 12 * 4 + 1, 0, 12, 1),
    (39, "pulse_cnt_acc_wide_minor", "pulses", 999999 * 6 + 2, 0, 999999, 2),
    (40, "pulse_cnt_acc_wide_major", "megapulses", 3 * 4, 0, 3, 0),
    (41, "current_precise", "mA", -3999, 0, -3.999, None),
    (43, "resistance", "Ω", 4700, 0, 4700, None),
]


@pytest.mark.parametrize(
    ("kind", "label", "unit", "start", "offset", "value", "metadata"),
    CONTINUOUS,
    ids=[f"{c[0]}-{c[1]}" for c in CONTINUOUS],
)
def test_continuous_type(
    kind: int,
    label: str,
    unit: str | None,
    start: int,
    offset: int,
    value: float,
    metadata: int | None,
) -> None:
    payload = frame(channel(kind, [offset, offset], start=start), base=60, factor=5)
    expected_param: dict[str, Any] = {"value": value, "type": label, "channel": 1}
    if metadata is not None:
        expected_param["metadata"] = metadata
    out = rows(payload)
    assert [r["params"] for r in out] == [[expected_param], [expected_param]]
    assert [r["measurement_interval"] for r in out] == [300, 300]
    assert type(out[0]["params"][0]["value"]) is type(value)
    readings = one(payload).readings
    extra = None if metadata is None else {"metadata": metadata}
    assert readings == (
        Reading(label, float(value), T, 1, unit, extra, f"ch1@{T}"),
        Reading(label, float(value), T + 300, 1, unit, extra, f"ch1@{T + 300}"),
    )


def test_metadata_split_is_on_the_magnitude_of_negative_raw_values() -> None:
    payload = frame(channel(6, [0], start=-7))  # IAQ: |-7| = 2*3 + 1
    assert rows(payload)[0]["params"] == [{"value": -2, "type": "iaq", "channel": 1, "metadata": 1}]


@pytest.mark.parametrize(
    ("kind", "label", "on", "off"),
    [
        (5, "open-close", "ALARM", "OK"),
        (7, "flooding", "ALARM", "OK"),
        (42, "output_control", "ON", "OFF"),
    ],
)
def test_binary_types(kind: int, label: str, on: str, off: str) -> None:
    payload = frame(channel(kind, [1, -121, -181]), base=60)
    assert params(payload) == [
        ("12:00:00", on, 1),
        ("12:01:00", on, 1),
        ("12:02:00", off, 1),
        ("12:03:00", off, 1),
    ]
    readings = one(payload).readings
    assert [(r.quantity, r.value, r.extra, r.unit) for r in readings[1:3]] == [
        (label, 1.0, {"state": on}, None),
        (label, 0.0, {"state": off}, None),
    ]


def test_unknown_measurement_type_keeps_its_raw_values() -> None:
    payload = frame(channel(99, [1], start=41))
    assert rows(payload)[0]["params"] == [{"value": 42, "type": "type_99", "channel": 1}]
    assert one(payload).readings[0].quantity == "type_99"


# --- sensor errors ------------------------------------------------------------------------------


def test_error_code_offsets_are_errors_not_values_and_keep_their_time_slot() -> None:
    offsets = [0, 8355840, 8388607, 8355839, 1]
    payload = frame(channel(1, offsets, start=200), base=60, factor=1)
    assert [r["params"][0] for r in rows(payload)] == [
        {"value": 20.0, "type": "temperature", "channel": 1},
        {"value": None, "type": "temperature", "channel": 1, "error_code": 8355840},
        {"value": None, "type": "temperature", "channel": 1, "error_code": 8388607},
        # Just below the range: a value (start_point is added).
        {"value": 835603.9, "type": "temperature", "channel": 1},
        {"value": 20.1, "type": "temperature", "channel": 1},
    ]
    readings = one(payload).readings
    assert [(r.value, r.extra, r.measured_at - T) for r in readings[1:3]] == [
        (None, {"error_code": 8355840}, 60),
        (None, {"error_code": 8388607}, 120),
    ]


# --- binary channels (spec §4.4) ---------------------------------------------------------------


def test_binary_changes_off_the_grid_get_their_own_rows() -> None:
    # ALARM at T, OK at T+90 (between grid points T+60 and T+120), ALARM at T+130, closed at T+240.
    payload = frame(channel(7, [1, -91, 131, 241]), base=60)
    assert params(payload) == [
        ("12:00:00", "ALARM", 1),
        ("12:01:00", "ALARM", 1),
        ("12:01:30", "OK", 1),
        ("12:02:00", "OK", 1),
        ("12:02:10", "ALARM", 1),
        ("12:03:00", "ALARM", 1),
        ("12:04:00", "ALARM", 1),
    ]
    assert {r["measurement_interval"] for r in rows(payload)} == {60}
    assert rows(payload)[2]["next_measurement_at"] == "2024-06-01 12:02:30 UTC"


def test_binary_rows_start_at_the_first_sample() -> None:
    # First sample at T+30 (not ±1): no grid row at T.
    payload = frame(channel(5, [-31, 91]), base=60)
    assert params(payload) == [
        ("12:00:30", "OK", 1),
        ("12:01:00", "OK", 1),
        ("12:01:30", "ALARM", 1),
    ]


def test_binary_offset_zero_is_ignored_and_samples_are_taken_in_time_order() -> None:
    payload = frame(channel(5, [0, -61, 1]), base=60)
    assert params(payload) == [("12:00:00", "ALARM", 1), ("12:01:00", "OK", 1)]


def test_binary_period_is_base_and_ignores_factor() -> None:
    payload = frame(channel(5, [1, -121]), base=60, factor=5)
    assert [r["measurement_interval"] for r in rows(payload)] == [60, 60, 60]


# --- factor, channel numbering, rows ------------------------------------------------------------


def test_factor_0_means_14_when_any_channel_is_binary() -> None:
    mixed = frame(channel(1, [0, 1], start=200), channel(5, [1, -61]), base=10, factor=0)
    out = rows(mixed)
    # Continuous: 10 * 14 = 140 s; binary: base 10 s.
    assert [
        (r["measured_at"][11:], r["measurement_interval"], [p["channel"] for p in r["params"]])
        for r in out
    ] == [
        ("12:00:00 UTC", 10, [2]),
        ("12:00:00 UTC", 140, [1]),
        ("12:00:10 UTC", 10, [2]),
        ("12:00:20 UTC", 10, [2]),
        ("12:00:30 UTC", 10, [2]),
        ("12:00:40 UTC", 10, [2]),
        ("12:00:50 UTC", 10, [2]),
        ("12:01:00 UTC", 10, [2]),
        ("12:02:20 UTC", 140, [1]),
    ]
    continuous_only = frame(channel(1, [0, 1], start=200), base=10, factor=0)
    assert [r["measurement_interval"] for r in rows(continuous_only)] == [10, 10]


def test_empty_and_no_sensor_channels_keep_the_numbering() -> None:
    payload = frame(
        channel(0, []),  # NO_SENSOR
        channel(1, [], start=200),  # temperature without samples
        channel(2, [0], start=50),
        channel(0, [5]),  # NO_SENSOR with offsets: still skipped
        channel(27, [0], start=455),
    )
    assert rows(payload)[0]["params"] == [
        {"value": 50, "type": "humidity", "channel": 3},
        {"value": 45.5, "type": "humidity_accurate", "channel": 5},
    ]
    assert [r.channel for r in one(payload).readings] == [3, 5]


def test_rows_group_channels_by_time_and_interval() -> None:
    payload = frame(
        channel(1, [0, 1], start=200), channel(2, [0, 1, 2], start=40, at=T + 60), base=60
    )
    assert [
        (r["measured_at"][11:19], [p["channel"] for p in r["params"]]) for r in rows(payload)
    ] == [
        ("12:00:00", [1]),
        ("12:01:00", [1, 2]),
        ("12:02:00", [2]),
        ("12:03:00", [2]),
    ]


def test_unpacked_repeated_offsets_decode_like_packed_ones() -> None:
    packed = frame(channel(1, [0, 3, -2], start=215))
    channel_bytes = (
        b"\x08\x01"
        + b"\x10"
        + varint(T)
        + b"\x20"
        + varint(zigzag(215))
        + b"".join(b"\x28" + varint(zigzag(o)) for o in (0, 3, -2))
    )
    unpacked = (
        b"\x0a\x06"
        + SERIAL
        + b"\x10\x01\x18\x3c\x40\x01"
        + b"\x22"
        + varint(len(channel_bytes))
        + channel_bytes
    )
    assert unpacked != packed
    assert to_json("m", unpacked) == to_json("m", packed)
    assert [r.value for r in one(unpacked).readings] == [21.5, 21.8, 21.3]


def test_unknown_fields_are_skipped() -> None:
    # Newer firmware adds fields: varint 100, length-delimited 101, fixed32 102, fixed64 103,
    # and a group 104 (a wire type no Efento message uses).
    extra = (
        varint(100 << 3)
        + varint(2**63)
        + varint(101 << 3 | 2)
        + b"\x03abc"
        + varint(102 << 3 | 5)
        + b"\x01\x02\x03\x04"
        + varint(103 << 3 | 1)
        + bytes(8)
        + varint(104 << 3 | 3)
        + b"\x08\x01"
        + varint(104 << 3 | 4)
    )
    for endpoint in ("m", "i", "c"):
        payload = seed_hex(endpoint)
        assert to_json(endpoint, payload + extra) == to_json(endpoint, payload)
        assert to_json(endpoint, extra + payload) == to_json(endpoint, payload)
    # Inside a channel too.
    inner = channel(1, [0], start=200).SerializeToString() + varint(100 << 3) + b"\x05"
    payload = b"\x0a\x06" + SERIAL + b"\x18\x3c\x22" + varint(len(inner)) + inner
    assert rows(payload)[0]["params"] == [{"value": 20.0, "type": "temperature", "channel": 1}]


# --- /m attributes ------------------------------------------------------------------------------


def test_measurement_attributes() -> None:
    payload = frame(
        channel(1, [0], start=200),
        base=60,
        factor=5,
        battery_status=False,
        next_transmission_at=T + 900,
        transfer_reason=0b1_0001_001,
        configuration_hash=0,
        cloud_token="token-1",
        extended_configuration_hash=77,
        battery_level=360 * 6 + 2,
    )
    decoded = one(payload)
    assert decoded.attributes == {
        "battery": "low",
        "measurement_period_base": 60,
        "measurement_period_factor": 5,
        "transfer_reason": 0b1_0001_001,
        "next_transmission_at": T + 900,
        "measurement_configuration_hash": 0,  # present on the wire, so kept even when 0
        "cloud_token": "token-1",
        "extended_configuration_hash": 77,
        "battery_level": 360 * 6 + 2,
        "power_source": "external",
        "battery_voltage": 3.6,
    }
    assert rows(payload)[0]["batteryStatus"] == "low"
    assert rows(payload)[0]["signal"] == 0  # field 7 absent
    bare = one(frame(channel(1, [0], start=200), battery_level=10921 * 6))
    assert bare.attributes is not None
    assert "signal" not in bare.attributes and "battery_voltage" not in bare.attributes
    assert bare.attributes["power_source"] == "battery"


def test_frame_without_channels_is_a_message_without_readings() -> None:
    payload = frame(signal=20)
    assert rows(payload) == []
    decoded = one(payload)
    assert decoded.readings == () and decoded.attributes is not None
    assert decoded.attributes["signal"] == 20


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["m", "i", "c"])
def test_bytes_that_are_not_protobuf_are_malformed(endpoint: str) -> None:
    error = refusal(b"\x0a\x06\x28\x2c", endpoint)
    assert error.malformed
    assert "not a valid Proto" in error.reason
    with pytest.raises(DecodeError):
        to_json(endpoint, b"\xff\xff\xff")
    with pytest.raises(DecodeError):
        summary(endpoint, b"\x0a\x06\x28\x2c")


def test_frame_without_serial_is_refused() -> None:
    error = refusal(ProtoMeasurements(measurement_period_base=60).SerializeToString())
    assert "serial_number" in error.reason and not error.malformed
    assert "field 25" in refusal(ProtoConfig(configuration_hash=3).SerializeToString(), "c").reason
    assert "serial" in refusal(b"", "i").reason


def test_base_0_with_samples_is_refused() -> None:
    assert "measurement_period_base" in refusal(frame(channel(1, [0, 1]), base=0)).reason
    assert one(frame(base=0)).readings == ()  # nothing to place in time: fine


def test_times_outside_the_unix_range_are_refused() -> None:
    error = refusal(frame(channel(1, [0], at=-5)))
    assert "channel 1" in error.reason and "clock" in error.reason
    huge_period = frame(channel(1, [0, 1]), base=65535, factor=2**32 - 1)
    assert "do not fit" in refusal(huge_period).reason


def test_binary_expansion_is_bounded() -> None:
    # One offset of 2^31 at a 1 s period would be two billion grid rows.
    payload = frame(channel(5, [1, -(2**31 - 1)]), base=1)
    assert f"{MAX_SAMPLES}" in refusal(payload).reason


# --- /c: split uploads and summaries -------------------------------------------------------------


def config_part(split: int, **fields: Any) -> bytes:
    return ProtoConfig(serial_number=SERIAL, payload_split_info=split, **fields).SerializeToString()


def test_split_configuration_parts_decode_as_one_when_concatenated() -> None:
    rules = [ProtoRule(condition=1)] * 2
    first = config_part(-1, measurement_period_base=60, configuration_hash=9, rules=rules)
    last = config_part(2, transmission_interval=900, data_endpoint="m", rules=rules)
    part = one(first, "c")
    assert (part.device, part.kind, part.attributes) == (DEVICE, KIND_CONFIG_PART, {})
    assert part.idempotency_key is not None
    whole = one(first + last, "c")
    assert whole.kind == "efento"
    assert whole.attributes == {
        "configuration": {
            "measurementPeriodBase": 60,
            "transmissionInterval": 900,
            "hash": 9,
            "serialNumber": DEVICE,
            "rules": [{"condition": "CONDITION_DISABLED"}] * 4,
            "dataEndpoint": "m",
            "payloadSplitInfo": 2,
        },
        "configuration_hash": 9,
    }
    assert summary("c", first) == summary("c", first)
    assert (summary("c", first).split_info, summary("c", first + last).split_info) == (-1, 2)


def test_summaries() -> None:
    s = summary("/efento/m", seed_hex("m"))
    assert (s.serial, s.configuration_hash, s.split_info, s.cloud_token) == (
        "282C024156AF",
        119,
        None,
        None,  # the seed sends an explicit empty token
    )
    assert summary("m", frame(cloud_token="abc")).cloud_token == "abc"
    assert summary("m", frame()).configuration_hash is None
    i = summary("i", seed_hex("i"))
    assert (i.serial, i.configuration_hash, i.split_info, i.cloud_token) == (
        "282C024156AF",
        None,
        None,
        None,
    )
    c = summary("c", seed_hex("c"))
    # The seed sensor has cloud_token_config 255 (send no token): its field 24 is no token.
    assert (c.serial, c.configuration_hash, c.split_info, c.cloud_token) == (
        "282C0240FD34",
        204,
        1,
        None,
    )
    with_token = config_part(0, cloud_token_config=1, cloud_token="tok")
    assert summary("c", with_token).cloud_token == "tok"
    with pytest.raises(DecodeError, match="not an Efento endpoint"):
        summary("t", b"")


def add(uploads: SplitUploads, payload: bytes, now: float) -> Part | Whole | Missing:
    return uploads.add(summary("c", payload), payload, now)


def test_split_uploads_put_parts_together_in_order() -> None:
    uploads = SplitUploads(max_age=300)
    one, two = config_part(-1, measurement_period_base=60), config_part(-2, ack_interval=600)
    last = config_part(3, configuration_hash=9)
    assert add(uploads, one, 1.0) == Part(1)
    assert add(uploads, two, 2.0) == Part(2)
    whole = add(uploads, last, 3.0)
    assert isinstance(whole, Whole)
    assert (whole.payload, whole.parts, whole.frame) == (
        one + two + last,
        3,
        summary("c", whole.payload),
    )
    # The upload is done: the same last part again finds nothing in memory.
    missing = add(uploads, last, 4.0)
    assert isinstance(missing, Missing)
    assert (missing.total, dict(missing.held)) == (3, {})


def test_an_unsplit_configuration_is_whole_at_once() -> None:
    uploads = SplitUploads(max_age=300)
    for split in (0, 1):
        payload = config_part(split, configuration_hash=4)
        assert add(uploads, payload, 1.0) == Whole(payload, summary("c", payload), 1)


def test_split_uploads_forget_old_parts_and_restart_on_part_one() -> None:
    uploads = SplitUploads(max_age=10)
    add(uploads, config_part(-1, ack_interval=1), 0.0)
    add(uploads, config_part(-2, ack_interval=2), 1.0)
    old = add(uploads, config_part(3), 11.0)  # the upload began 11 s ago: too old
    assert isinstance(old, Missing) and dict(old.held) == {}
    fresh_one = config_part(-1, ack_interval=5)
    add(uploads, config_part(-2, ack_interval=2), 12.0)  # a part 2 of an old upload ...
    add(uploads, fresh_one, 13.0)  # ... is dropped when part 1 starts a new one
    step = add(uploads, config_part(3), 14.0)
    assert isinstance(step, Missing) and dict(step.held) == {1: fresh_one}


def test_split_uploads_complete_with_parts_found_elsewhere() -> None:
    uploads = SplitUploads(max_age=300)
    one, two, last = (
        config_part(-1, ack_interval=1),
        config_part(-2, ack_interval=2),
        config_part(3),
    )
    add(uploads, two, 1.0)
    step = add(uploads, last, 2.0)
    assert isinstance(step, Missing)
    # Parts in memory win over those found elsewhere (the journal may hold an older upload).
    whole = uploads.complete(step, {1: one, 2: b"older"})
    assert isinstance(whole, Whole) and whole.payload == one + two + last
    assert uploads.complete(step, {}) == Incomplete(step.frame, last, (1,))


def test_split_uploads_keep_at_most_max_uploads_sensors() -> None:
    uploads = SplitUploads(max_age=300, max_uploads=2)
    for n in range(3):
        serial = bytes([0, 0, 0, 0, 0, n + 1])
        part = ProtoConfig(serial_number=serial, payload_split_info=-1).SerializeToString()
        add(uploads, part, float(n))
    first_last = ProtoConfig(serial_number=bytes(5) + b"\x01", payload_split_info=2)
    step = add(uploads, first_last.SerializeToString(), 4.0)
    assert isinstance(step, Missing) and dict(step.held) == {}  # the oldest sensor was dropped


def test_part_index_of_stored_parts() -> None:
    assert [part_index(config_part(s)) for s in (-3, -1, 0, 2)] == [3, 1, None, None]
    assert part_index(b"\xff") is None


# --- downlinks -----------------------------------------------------------------------------------


def test_answer_payload_merges_downlinks_with_the_clock() -> None:
    assert answer_payload([], 5.0, configuration_request=False) is None
    only_request = ProtoConfig.FromString(
        answer_payload([], 7.9, configuration_request=True) or b""
    )
    assert (only_request.current_time, only_request.configuration_request) == (7, True)
    first = encode_config({"transmission_interval": 600, "rules": [{"condition": 2}] * 2})
    second = encode_config({"transmission_interval": 1200, "rules": [{"condition": 1}]})
    merged = ProtoConfig.FromString(
        answer_payload([first, second], 9.0, configuration_request=False) or b""
    )
    assert (merged.transmission_interval, merged.current_time) == (1200, 9)
    assert [r.condition for r in merged.rules] == [1]  # replaced, not appended
    assert not merged.configuration_request
    assert is_config(first) and not is_config(b"\xff\xff\xff")
    with pytest.raises(DecodeError, match="not a ProtoConfig"):
        answer_payload([b"\xff\xff\xff"], 9.0, configuration_request=False)


def test_seed_reply_is_a_configuration_request() -> None:
    assert encode_config({"configuration_request": True}) == b"\x98\x01\x01"
    assert encode_config({"requestConfiguration": True}) == b"\x98\x01\x01"
    assert to_json("c", b"\x98\x01\x01") == {"requestConfiguration": True}


def test_encode_config_round_trips_through_decode() -> None:
    fields: dict[str, Any] = {
        "measurement_period_base": 60,
        "transmissionInterval": 900,
        "ack_interval": 0xFFFFFFFF,
        "current_time": T,
        "device_info_request": True,
        "apn": "\x7f",
        "plmnSelection": 1000000,
        "data_server_ip": "192.0.2.10",
        "data_server_port": 5683,
        "cloud_token_config": 1,
        "cloud_token": "00000000-0000-0000-0000-000000000000",
        "rules": [
            {},
            {"condition": "CONDITION_DISABLED"},
            {
                "channelMask": 1,
                "condition": "CONDITION_HIGH_THRESHOLD",
                "parameters": [300, 10, 1, 1, 1],
                "action": 3,
            },
        ],
        "calendars": [
            {"type": "CALENDAR_TYPE_WEEK", "rule_mask": 4, "parameters": [62, 480, 1020, 4]}
        ],
        "dns_server_ip": [255, 255, 255, 255],
        "led_config": [1, 1, 255, 255, 255, 0, 0, 0, 10],
        "network_key": "fw==",
        "set_output_control_state_request": [{"channel_index": 1, "channel_state": 2}],
        "ble_advertising_period": {"mode": "BLE_ADVERTISING_PERIOD_MODE_NORMAL", "normal": 1600},
        "network_search": {
            "time_schema_last_registration_ok": [1, 2, 4, 8, 16, 32],
            "counter_max": 3,
        },
        "nvm_status": 0x7F,
        "apn_user_name": "user",
    }
    payload = encode_config(fields)
    assert to_json("c", payload) == {
        "measurementPeriodBase": 60,
        "transmissionInterval": 900,
        "ackInterval": 4294967295,
        "requestDeviceInfo": True,
        "currentTime": T,
        "dataServerIp": "192.0.2.10",
        "dataServerPort": 5683,
        "apn": "\x7f",
        "plmnSelection": 1000000,
        "cloudTokenConfig": 1,
        "cloudToken": "00000000-0000-0000-0000-000000000000",
        "rules": [
            {},
            {"condition": "CONDITION_DISABLED"},
            {
                "channelMask": 1,
                "condition": "CONDITION_HIGH_THRESHOLD",
                "parameters": [300, 10, 1, 1, 1],
                "action": "ACTION_TRIGGER_TRANSMISSION_WITH_ACK",
            },
        ],
        "dnsServerIp": [255, 255, 255, 255],
        "calendars": [
            {"ruleMask": 4, "parameters": [62, 480, 1020, 4], "type": "CALENDAR_TYPE_WEEK"}
        ],
        "ledConfig": [1, 1, 255, 255, 255, 0, 0, 0, 10],
        "networkKey": "fw==",
        "apnUserName": "user",
        "networkSearch": {"timeSchemaLastRegistrationOk": [1, 2, 4, 8, 16, 32], "counterMax": 3},
        "setOutputControlStateRequest": [{"channelIndex": 1, "channelState": 2}],
        "bleAdvertisingPeriod": {"mode": "BLE_ADVERTISING_PERIOD_MODE_NORMAL", "normal": 1600},
        "nvmStatus": 127,
    }


def test_decoded_configuration_minus_device_fields_encodes_back_to_the_same_settings() -> None:
    printed = to_json("c", seed_hex("c"))
    device_fields = (
        "errors",
        "hash",
        "serialNumber",
        "channelTypes",
        "errorTimestamp",
        "hashTimestamp",
        "payloadSplitInfo",
    )
    settable = {k: v for k, v in printed.items() if k not in device_fields}
    assert to_json("c", encode_config(settable)) == settable


@pytest.mark.parametrize(
    "name",
    [
        *sorted(DEVICE_ONLY),
        "serialNumber",
        "hash",
        "errors",
        "channelTypes",
        "payloadSplitInfo",
        "hashTimestamp",
    ],
)
def test_encode_config_refuses_device_only_fields(name: str) -> None:
    with pytest.raises(ValueError, match=f"^{name}: device-only field"):
        encode_config({"measurement_period_base": 60, name: 1})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"transmission_interval": 30},
            r"transmission_interval: 30 is out of range; allowed 60\.\.604800",
        ),
        (
            {"measurementPeriodBase": 0},
            r"measurementPeriodBase: 0 is out of range; allowed 1\.\.65535",
        ),
        ({"ack_interval": 100}, r"180\.\.2592000 or 4294967295"),
        ({"measurement_period_base": "60"}, "must be an integer"),
        ({"measurement_period_base": True}, "must be an integer"),
        ({"data_server_port": 70000}, r"1\.\.65535"),
        ({"cloud_token_config": 3}, "must be one of 1"),
        ({"cloud_token": "x" * 37}, "37 characters; at most 36"),
        ({"data_endpoint": ""}, "non-empty string"),
        ({"data_endpoint": "measurements"}, "at most 11"),
        ({"configuration_request": False}, "can only be true"),
        ({"rules": [{}] * 17}, r"1\.\.16 objects"),
        ({"rules": [{"channel_mask": 64}]}, r"rules\[0\]\.channel_mask: 64 is out of range"),
        ({"rules": [{"condition": "NOPE"}]}, r"rules\[0\]\.condition: must be 0\.\.8"),
        ({"rules": [{"colour": 1}]}, r"rules\[0\]\.colour: unknown field"),
        ({"dns_server_ip": [1, 2, 3, 256]}, r"dns_server_ip\[3\]: 256 is out of range"),
        ({"led_config": [1, 2]}, "list of 9 items"),
        ({"network_key": "not base64!"}, "base64 of 1..16 bytes"),
        ({"network_key": "AAAAAAAAAAAAAAAAAAAAAAAA"}, "base64 of 1..16 bytes"),
        ({"nvm_status": 1}, "nvm_status: device-only field"),
        ({"set_output_control_state_request": [{"channel_state": 3}]}, "must be one of 1"),
        ({"ble_advertising_period": {"normal": 10}}, r"32\.\.16384"),
        ({"plmn_selection": 50}, r"100\.\.999999 or 1000000 or 4294967295"),
        (
            {"measurement_period_bse": 60},
            "unknown ProtoConfig field; did you mean 'measurement_period_base'",
        ),
        ({"colour": "red"}, "colour: unknown ProtoConfig field"),
        ({"measurement_period_base": None}, "null cannot be sent"),
        ({"measurement_period_base": 60, "measurementPeriodBase": 60}, "given twice"),
        ({}, "no fields"),
    ],
)
def test_encode_config_refuses_bad_values_naming_the_field(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        encode_config(fields)
