"""The generic JSON codec ("json") on the JSON shapes the seeds publish, its options, fuzzing."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fieldbridge.codecs import build_codec
from fieldbridge.codecs.json_mapping import MAX_READINGS, build
from fieldbridge.codecs.jsonpath import parse_path, show
from fieldbridge.errors import ConfigError, DecodeError
from fieldbridge.model import Decoded, Reading

RECEIVED = 1_800_000_000.25


def run(
    options: dict[str, Any], body: object, topic: str | None = "sensors/abc/data"
) -> list[Decoded]:
    meta = {} if topic is None else {"topic": topic}
    payload = body if isinstance(body, bytes) else orjson.dumps(body)
    return build(options)(payload, meta, RECEIVED)


def refusal(options: dict[str, Any], body: object, topic: str | None = "sensors/abc/data") -> str:
    with pytest.raises(DecodeError) as caught:
        run(options, body, topic)
    return caught.value.reason


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# --- the shapes users publish -----------------------------------------------------------------


def test_no_options_takes_every_number_and_the_topic_as_device() -> None:
    body = {"t": 21.5, "h": 40, "ok": True, "name": "x", "meta": {"bat": 3.3}, "list": [1, "2"]}
    [message] = run({}, body)
    assert message == Decoded(
        "sensors/abc/data",
        (
            Reading("t", 21.5, RECEIVED),
            Reading("h", 40.0, RECEIVED),
            Reading("meta.bat", 3.3, RECEIVED),
            Reading("list[0]", 1.0, RECEIVED),
        ),
    )


def test_seed_000_network_status_with_the_device_in_the_topic() -> None:
    body = {
        "Gateway": "TTGWCX",
        "Status": "OK",
        "Version": "1.2",
        "Uptime": 11758,
        "Latitude": -36.83,
        "Longitude": 174.83,
        "Project": "Bayfield",
    }
    [message] = run({"device_topic_segment": 2, "kind": "aklc"}, body, "AKLC/Network/TTGWCX")
    assert message.device == "TTGWCX"
    assert message.kind == "aklc"
    assert [(r.quantity, r.value) for r in message.readings] == [
        ("Uptime", 11758.0),
        ("Latitude", -36.83),
        ("Longitude", 174.83),
    ]


def test_seed_000_trap_event_with_the_device_in_the_json() -> None:
    body = {"NodeID": "Trap01", "Event": "T", "State": "O", "Gateway": "TTGWCX", "VBat": 3.71}
    [message] = run({"device_path": "NodeID"}, body, "EnvironmentalServices/traps")
    assert message.device == "Trap01"
    assert message.readings == (Reading("VBat", 3.71, RECEIVED),)


def test_a_text_only_trap_event_is_refused_unless_kept_by_option() -> None:
    body = {"NodeID": "Trap01", "Event": "H", "State": "C"}  # a heartbeat: no number
    reason = refusal({"device_path": "NodeID"}, body, "EnvironmentalServices/traps")
    assert reason.startswith("payload holds no readings (it has no number)")
    assert "codec_options.keep_without_readings = true" in reason
    options = {"device_path": "NodeID", "keep_without_readings": True}
    [message] = run(options, body, "EnvironmentalServices/traps")
    assert message.device == "Trap01" and message.readings == ()


def test_seed_002_list_of_stream_entries_with_text_values_and_ids() -> None:
    entries = [
        {
            "_id": "1621122796939-0",
            "_device_uuid": "b3f1c2",
            "_device_type": "raspberrypi4-64",
            "_app_id": "1234",
            "_app_name": "sensors",
            "temperature_celsius": "20.3",
            "humidity_percent": "51",
        },
        {
            "_id": "1621122797939-0",
            "_device_uuid": "b3f1c2",
            "_device_type": "raspberrypi4-64",
            "_app_id": "1234",
            "_app_name": "sensors",
            "temperature_celsius": "20.4",
        },
    ]
    options = {
        "device_path": "_device_uuid",
        "id_path": "_id",
        "numeric_strings": True,
        "exclude": ["_app_id"],
        "kind": "mqtt-handler",
    }
    out = run(options, entries, "balena/b3f1c2/values")
    assert [m.idempotency_key for m in out] == ["b3f1c2/1621122796939-0", "b3f1c2/1621122797939-0"]
    assert [[(r.quantity, r.value) for r in m.readings] for m in out] == [
        [("temperature_celsius", 20.3), ("humidity_percent", 51.0)],
        [("temperature_celsius", 20.4)],
    ]
    # Each entry keeps its own JSON as the journal's payload.
    assert [orjson.loads(m.raw or b"") for m in out] == entries


def test_a_reading_map_with_units_and_a_timestamp() -> None:
    options = {
        "device_path": "$.meta.id",
        "timestamp_path": "meta.time",
        "readings": {
            "temperature": {"path": "data.t", "unit": "°C"},
            "humidity": "data.values[1]",
            "pressure": "data.p",
        },
    }
    body = {
        "meta": {"id": 42, "time": "2027-01-15T08:00:00Z"},
        "data": {"t": 21.5, "values": [0, 40]},
    }
    [message] = run(options, body)
    at = epoch("2027-01-15T08:00:00")
    assert message.device == "42"
    # pressure is not in this message: left out, not refused
    assert message.readings == (
        Reading("temperature", 21.5, at, 0, "°C"),
        Reading("humidity", 40.0, at),
    )


def test_mapped_values_null_booleans_and_text() -> None:
    options = {"readings": {"a": "a", "b": "b", "c": "c"}}
    [message] = run(options, {"a": None, "b": False, "c": 1})
    assert [r.value for r in message.readings] == [None, 0.0, 1.0]
    reason = refusal(options, {"a": "20.5"})
    assert reason == (
        "a: '20.5' is text; set codec_options.numeric_strings = true to read numbers sent as text"
    )
    [message] = run({**options, "numeric_strings": True}, {"a": "20.5"})
    assert message.readings[0].value == 20.5
    assert refusal({**options, "numeric_strings": True}, {"a": "warm"}) == (
        "a: must be a finite number, got text"
    )
    assert refusal(options, {"a": [1]}) == "a: must be a finite number, got array"


# --- device ----------------------------------------------------------------------------------


def test_device_from_topic_levels_counting_from_either_end() -> None:
    assert run({"device_topic_segment": 0}, {"x": 1})[0].device == "sensors"
    assert run({"device_topic_segment": -2}, {"x": 1})[0].device == "abc"
    assert refusal({"device_topic_segment": 5}, {"x": 1}) == (
        "topic 'sensors/abc/data' has no level 5 (codec_options.device_topic_segment counts from 0)"
    )
    assert refusal({"device_topic_segment": 1}, {"x": 1}, "sensors//data") == (
        "topic level 1: must be non-empty text or an integer, got text"
    )


def test_device_path_problems_name_the_path() -> None:
    assert refusal({"device_path": "meta.id"}, {"meta": {}}) == (
        "meta.id: no device id there (codec_options.device_path)"
    )
    assert refusal({"device_path": "id"}, {"id": 1.5}) == (
        "id: must be non-empty text or an integer, got number"
    )
    assert (
        refusal({"device_path": "id"}, {"id": "a\u0000b"}) == "id: must not contain NUL characters"
    )
    assert "longer than 256" in refusal({"device_path": "id"}, {"id": "x" * 300})
    assert refusal({"device_path": "id"}, [{"id": "a", "t": 1}, {}]) == (
        "[1].id: no device id there (codec_options.device_path)"
    )


def test_without_a_topic_the_device_path_is_needed() -> None:
    assert "set codec_options.device_path" in refusal({}, {"x": 1}, topic=None)


# --- time ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        ("2027-01-15T08:00:00Z", "auto", epoch("2027-01-15T08:00:00")),
        ("2027-01-15 10:00:00+02:00", "auto", epoch("2027-01-15T08:00:00")),
        ("2027-01-15T08:00:00", "auto", epoch("2027-01-15T08:00:00")),
        (1_800_000_000, "auto", 1_800_000_000.0),
        (1_800_000_000.5, "auto", 1_800_000_000.5),
        ("1800000000", "auto", 1_800_000_000.0),
        (1_800_000_000_123, "auto", 1_800_000_000.123),
        (1_800_000_000_123_456, "auto", 1_800_000_000.123456),
        (1_800_000_000_123_456_789, "auto", 1_800_000_000.1234567),
        (1_800_000_000, "ms", 1_800_000.0),
        (5, "s", 5.0),
    ],
)
def test_timestamps(value: object, unit: str, expected: float) -> None:
    [message] = run({"timestamp_path": "ts", "time_unit": unit}, {"ts": value, "v": 1})
    assert message.readings[0].measured_at == pytest.approx(expected, abs=1e-6)


def test_a_missing_timestamp_means_the_receive_time() -> None:
    for body in ({"v": 1}, {"v": 1, "ts": None}):
        [message] = run({"timestamp_path": "ts"}, body)
        assert message.readings[0].measured_at == RECEIVED
        assert message.idempotency_key is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("soon", "ts: 'soon' is neither ISO 8601 nor an epoch number"),
        (True, "ts: must be ISO 8601 text or an epoch number, got boolean"),
        ({"s": 1}, "ts: must be ISO 8601 text or an epoch number, got object"),
        (-5, "ts: '-5' is out of range (1970 to 9999)"),
        (1e300, "out of range"),
    ],
)
def test_bad_timestamps(value: object, reason: str) -> None:
    assert reason in refusal({"timestamp_path": "ts"}, {"ts": value, "v": 1})


def test_the_timestamp_device_and_id_are_not_readings() -> None:
    options = {"timestamp_path": "ts", "device_path": "dev", "id_path": "n"}
    [message] = run(options, {"ts": 1_800_000_000, "dev": 7, "n": 3, "v": 1})
    assert [r.quantity for r in message.readings] == ["v"]


# --- idempotency ------------------------------------------------------------------------------


def test_id_path_gives_the_key_per_device() -> None:
    [message] = run({"id_path": "seq"}, {"seq": 17, "v": 1})
    assert message.idempotency_key == "sensors/abc/data/17"
    [message] = run({"id_path": "seq"}, {"v": 1})
    assert message.idempotency_key is None


def test_a_timestamped_message_is_keyed_by_its_bytes_so_redeliveries_collapse() -> None:
    options = {"timestamp_path": "ts"}
    first = run(options, {"ts": 1_800_000_000, "v": 1})[0].idempotency_key
    again = run(options, {"ts": 1_800_000_000, "v": 1})[0].idempotency_key
    other = run(options, {"ts": 1_800_000_000, "v": 2})[0].idempotency_key
    assert first is not None and first == again != other
    assert run({}, {"v": 1})[0].idempotency_key is None  # no time: a repeat may be real


# --- issue 10: no readings, NUL in names, device ids, duplicate keys, UTF-8 ------------------


def test_a_payload_without_readings_is_refused_and_counted() -> None:
    with pytest.raises(DecodeError) as caught:
        run({}, {"s": "text"})
    assert caught.value.reason.startswith("payload holds no readings (it has no number)")
    assert caught.value.cause == "no_readings" and not caught.value.malformed
    mapped = {"readings": {"t": "d.t"}}
    assert "none of the mapped paths is in it" in refusal(mapped, {"d": {"h": 1}})
    assert refusal({}, [{"v": 1}, {"s": "x"}]).startswith("[1]: it holds no readings")


def test_a_nul_in_a_key_is_named_as_such() -> None:
    reason = refusal({}, {"a\u0000b": 1})
    assert reason.startswith("a\\x00b: the name contains a NUL character at position 1")
    assert "at most" not in reason and "\x00" not in reason
    assert "names are at most 256 characters" in refusal({}, {"k" * 300: 1})


@pytest.mark.parametrize(
    ("options", "body", "topic", "reason"),
    [
        ({}, {"v": 1}, "sensors/\x1b[2J", "topic 'sensors/\\x1b[2J' contains the control"),
        (
            {"device_topic_segment": 1},
            {"v": 1},
            "sensors/ad\u202emin/data",
            "topic level 1 'ad\\u202emin' contains the invisible format character U+202E",
        ),
        (
            {"device_path": "meta.id"},
            {"meta": {"id": "Trap\u200b01"}, "v": 1},
            "t",
            "meta.id 'Trap\\u200b01' contains the invisible format character U+200B",
        ),
    ],
)
def test_device_ids_must_be_printable(
    options: dict[str, Any], body: object, topic: str, reason: str
) -> None:
    with pytest.raises(DecodeError) as caught:
        run(options, body, topic)
    assert caught.value.reason.startswith(reason), caught.value.reason
    assert caught.value.cause == "bad_device_id"


def test_duplicate_keys_and_invalid_utf8_are_refused_with_the_place() -> None:
    assert refusal({}, b'{"v": 1, "v": 2}').startswith("payload: key 'v' appears twice")
    assert refusal({}, b'[{"v": 1}, {"d": {"t": 1, "t": 1}}]').startswith(
        "[1].d: key 't' appears twice"
    )
    with pytest.raises(DecodeError) as caught:
        run({}, b'{"name": "caf\xe9", "v": 1}')
    assert caught.value.reason == "payload is not UTF-8: invalid byte 0xe9 at offset 13"
    assert caught.value.malformed


# --- refusals and options ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{", "payload is not valid JSON"),
        (b"[]", "the array is empty; send at least one object"),
        (b"5", "payload: must be a JSON object, got number"),
        (b"[1]", "[0]: must be a JSON object, got number"),
    ],
)
def test_refused_payloads(body: bytes, reason: str) -> None:
    assert reason in refusal({}, body)


def test_not_json_is_malformed() -> None:
    with pytest.raises(DecodeError) as caught:
        run({}, b"\xff")
    assert caught.value.malformed


def test_limits_on_leaves_names_and_depth() -> None:
    assert f"more than {MAX_READINGS} numbers" in refusal({}, {"v": list(range(MAX_READINGS + 1))})
    assert "names are at most 256 characters" in refusal({}, {"k" * 300: 1})
    # Nesting deeper than Python's recursion limit is valid JSON: no crash, a reason at most.
    deep = b'{"d":' + b"[" * 1000 + b"1" + b"]" * 1000 + b"}"
    assert "names are at most 256 characters" in refusal({}, deep)
    [message] = run({"readings": {"v": "d" + "[0]" * 1000}}, deep)
    assert message.readings == (Reading("v", 1.0, RECEIVED),)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"device_path": "a", "device_topic_segment": 1},
            "give device_topic_segment or device_path, not both",
        ),
        ({"device_path": "a..b"}, "device_path: 'a..b': cannot read the path at '..b'"),
        ({"timestamp_path": ""}, "timestamp_path: '' is not a path"),
        ({"time_unit": "h"}, "time_unit: Input should be 'auto', 's', 'ms', 'us' or 'ns'"),
        ({"readings": {}}, "readings: name at least one reading"),
        (
            {"readings": {"t": 5}},
            'readings: t: write a path ("data.t") or {path = "data.t", unit = "°C"}',
        ),
        ({"readings": {"t": {"path": "a", "units": "C"}}}, "readings: t.units: Extra inputs"),
        ({"readings": {"t": "a["}}, "readings: t: 'a[': cannot read the path"),
        ({"exclude": ["x]"]}, "exclude: 'x]': cannot read the path"),
        ({"kind": ""}, "kind: String should have at least 1 character"),
        ({"device": "x"}, "device: Extra inputs are not permitted"),
    ],
)
def test_bad_options_name_the_option(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_codec("json", options, setting="sources.mqtt.field.codec")
    assert "sources.mqtt.field.codec options for codec 'json'" in str(caught.value)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("text", "steps"),
    [
        ("meta.id", ("meta", "id")),
        ("$.meta.id", ("meta", "id")),
        ("data[0].t", ("data", 0, "t")),
        ("values[-1]", ("values", -1)),
        ('a["b.c"].d', ("a", "b.c", "d")),
        ('["say \\"hi\\""]', ('say "hi"',)),
    ],
)
def test_path_syntax(text: str, steps: tuple[object, ...]) -> None:
    assert parse_path(text) == steps
    assert parse_path(show(steps)) == steps  # type: ignore[arg-type]


# --- fuzzing ----------------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
OPTION_SETS = [
    {},
    {"device_topic_segment": 1, "timestamp_path": "ts", "numeric_strings": True},
    {
        "device_path": "id",
        "id_path": "n",
        "readings": {"t": "d.t", "h": {"path": "d[0]", "unit": "%"}},
    },
    {"device_path": "a.b[1]", "timestamp_path": "a.ts", "time_unit": "ms", "exclude": ["x"]},
    {"device_path": "id", "keep_without_readings": True},
]
keys = st.sampled_from(["id", "n", "ts", "d", "t", "a", "b", "x", "é", "", "\x1b[31m", "\u202e"])
leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.text(max_size=10)
    | st.sampled_from(["2027-01-15T08:00:00Z", "1800000000", "x\u0000", "a\x1bb", "\u200b"])
)
values = st.recursive(
    leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=16,
)


def outcome(options: dict[str, Any], payload: bytes, topic: str = "sensors/abc/data") -> None:
    try:
        out = build(options)(payload, {"topic": topic}, RECEIVED)
    except DecodeError as exc:
        assert exc.reason
        assert exc.reason.isprintable()  # names and values from the payload are escaped
        return
    assert out and all(isinstance(m, Decoded) for m in out)
    for message in out:
        assert message.device and message.device.isprintable()
        assert message.readings or options.get("keep_without_readings")
        for reading in message.readings:
            assert reading.value is None or math.isfinite(reading.value)
            assert 0 <= reading.measured_at < 253402300800
            assert reading.quantity and "\x00" not in reading.quantity


@FUZZ
@given(st.sampled_from(OPTION_SETS), st.binary(max_size=200))
def test_fuzz_bytes(options: dict[str, Any], payload: bytes) -> None:
    outcome(options, payload)


@FUZZ
@given(st.sampled_from(OPTION_SETS), st.text(max_size=30), values)
def test_fuzz_topics(options: dict[str, Any], topic: str, value: object) -> None:
    try:
        payload = orjson.dumps(value)
    except orjson.JSONEncodeError:
        return
    outcome(options, payload, topic)


@FUZZ
@given(st.sampled_from(OPTION_SETS), values)
def test_fuzz_json(options: dict[str, Any], value: object) -> None:
    try:
        payload = orjson.dumps(value)
    except orjson.JSONEncodeError:
        return
    outcome(options, payload)
