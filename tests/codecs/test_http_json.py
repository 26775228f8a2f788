"""The generic JSON codec of POST /api/v1/ingest: accepted forms, every refusal, and fuzzing."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fieldbridge.codecs.http_json import MAX_TEXT, decode
from fieldbridge.errors import DecodeError
from fieldbridge.model import Decoded, Reading

RECEIVED = 1_700_000_000.5
META: dict[str, Any] = {"remote": "127.0.0.1"}


def run(body: object) -> list[Decoded]:
    return decode(orjson.dumps(body), META, RECEIVED)


def refusal(body: object | bytes) -> DecodeError:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    with pytest.raises(DecodeError) as caught:
        decode(raw, META, RECEIVED)
    return caught.value


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


# --- accepted forms ---------------------------------------------------------------------------


def test_one_object_is_one_message_without_raw_slice() -> None:
    out = run({"device": "d1", "kind": "thermo", "readings": {"temperature": 21.5}})
    assert out == [
        Decoded("d1", (Reading("temperature", 21.5, RECEIVED),), kind="thermo", raw=None)
    ]


def test_array_gives_one_message_per_item_each_with_its_own_raw_bytes() -> None:
    items = [
        {"device": "a", "readings": {"t": 1}},
        {"device": "b", "readings": {"t": 2}, "id": "k-b"},
    ]
    out = run(items)
    assert [d.device for d in out] == ["a", "b"]
    assert [d.idempotency_key for d in out] == [None, "k-b"]
    # The journal keeps each item's own JSON, so a sink can show exactly what that device sent.
    assert [orjson.loads(d.raw or b"") for d in out] == items


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("2024-01-02T03:04:05Z", epoch("2024-01-02T03:04:05+00:00")),
        ("2024-01-02T03:04:05.250Z", epoch("2024-01-02T03:04:05.250+00:00")),
        ("2024-01-02T05:04:05+02:00", epoch("2024-01-02T03:04:05+00:00")),
        ("2024-01-01T20:04:05-07:00", epoch("2024-01-02T03:04:05+00:00")),
        ("2024-01-02T03:04:05", epoch("2024-01-02T03:04:05+00:00")),  # naive means UTC
        ("2024-01-02 03:04:05", epoch("2024-01-02T03:04:05+00:00")),
        (1_704_164_645, 1_704_164_645.0),
        (1_704_164_645.75, 1_704_164_645.75),
        (0, 0.0),
        (253_402_300_799.5, 253_402_300_799.5),  # the last instant before year 10000
        (None, RECEIVED),
    ],
)
def test_timestamp_forms(ts: object, expected: float) -> None:
    (message,) = run({"device": "d", "ts": ts, "readings": {"t": 1}})
    assert message.readings[0].measured_at == pytest.approx(expected, abs=1e-6)


def test_timestamp_defaults_to_received_at() -> None:
    (message,) = run({"device": "d", "readings": {"t": 1, "h": 2}})
    assert {r.measured_at for r in message.readings} == {RECEIVED}


def test_naive_timestamp_is_utc_whatever_the_local_zone() -> None:
    (message,) = run({"device": "d", "ts": "2024-06-01T00:00:00", "readings": {"t": 1}})
    assert message.readings[0].measured_at == datetime(2024, 6, 1, tzinfo=UTC).timestamp()


def test_reading_forms() -> None:
    (message,) = run(
        {
            "device": "d",
            "readings": {
                "temperature": 21.5,
                "count": 7,
                "door_open": True,
                "alarm": False,
                "missing": None,
                "humidity": {"value": 40, "unit": "%", "channel": 2},
                "battery": {"value": None},
                "pressure": {"value": 1013.2, "unit": "hPa"},
            },
        }
    )
    by_name = {r.quantity: r for r in message.readings}
    assert [r.quantity for r in message.readings] == [
        "temperature",
        "count",
        "door_open",
        "alarm",
        "missing",
        "humidity",
        "battery",
        "pressure",
    ]
    assert by_name["temperature"] == Reading("temperature", 21.5, RECEIVED)
    assert by_name["count"].value == 7.0 and isinstance(by_name["count"].value, float)
    assert by_name["door_open"].value == 1.0
    assert by_name["alarm"].value == 0.0
    assert by_name["missing"].value is None
    assert by_name["humidity"] == Reading("humidity", 40.0, RECEIVED, channel=2, unit="%")
    assert by_name["battery"] == Reading("battery", None, RECEIVED)
    assert by_name["pressure"] == Reading("pressure", 1013.2, RECEIVED, channel=0, unit="hPa")


@pytest.mark.parametrize(("key", "expected"), [("abc-1", "abc-1"), (42, "42"), (0, "0")])
def test_idempotency_key_string_or_integer(key: object, expected: str) -> None:
    (message,) = run({"device": "d", "id": key, "readings": {"t": 1}})
    assert message.idempotency_key == expected


def test_large_but_finite_numbers_are_kept() -> None:
    (message,) = run({"device": "d", "readings": {"big": 1e308, "int": 2**63 - 1}})
    assert [r.value for r in message.readings] == [1e308, float(2**63 - 1)]


# --- refusals: each names the field ---------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason_starts"),
    [
        ({"device": "d", "readings": {"t": 1}, "temp": 3}, "temp: unknown field"),
        ([{"device": "d", "readings": {"t": 1}}, {"device": "e", "x": 1}], "[1].x: unknown field"),
        ({"readings": {"t": 1}}, "device: required"),
        ({"device": None, "readings": {"t": 1}}, "device: required"),
        ({"device": "", "readings": {"t": 1}}, "device: must be a non-empty string"),
        ({"device": "   ", "readings": {"t": 1}}, "device: must be a non-empty string"),
        ({"device": 17, "readings": {"t": 1}}, "device: must be a non-empty string"),
        ({"device": "x" * (MAX_TEXT + 1), "readings": {"t": 1}}, "device: longer than"),
        ({"device": "d", "kind": 3, "readings": {"t": 1}}, "kind: must be a non-empty string"),
        ({"device": "d", "kind": "", "readings": {"t": 1}}, "kind: must be a non-empty string"),
        ({"device": "d"}, "readings: must be a non-empty object"),
        ({"device": "d", "readings": {}}, "readings: must be a non-empty object"),
        ({"device": "d", "readings": [1, 2]}, "readings: must be a non-empty object"),
        ({"device": "d", "readings": 21.5}, "readings: must be a non-empty object"),
        ({"device": "d", "readings": {"t": "21.5"}}, "readings.t: must be a number"),
        ({"device": "d", "readings": {"t": [1]}}, "readings.t: must be a number"),
        ({"device": "d", "readings": {"": 1.0}}, "readings: quantity names must be"),
        ({"device": "d", "readings": {"q" * (MAX_TEXT + 1): 1}}, "readings: quantity names"),
        ({"device": "d", "readings": {"t": {"unit": "C"}}}, "readings.t.value: required"),
        ({"device": "d", "readings": {"t": {"value": "1"}}}, "readings.t: must be a number"),
        ({"device": "d", "readings": {"t": {"value": 1, "u": 1}}}, "readings.t.u: unknown field"),
        ({"device": "d", "readings": {"t": {"value": 1, "unit": 5}}}, "readings.t.unit: must be"),
        ({"device": "d", "readings": {"t": {"value": 1, "unit": ""}}}, "readings.t.unit: must"),
        ({"device": "d", "readings": {"t": {"value": 1, "channel": -1}}}, "readings.t.channel"),
        ({"device": "d", "readings": {"t": {"value": 1, "channel": 65536}}}, "readings.t.channel"),
        ({"device": "d", "readings": {"t": {"value": 1, "channel": "2"}}}, "readings.t.channel"),
        ({"device": "d", "readings": {"t": {"value": 1, "channel": True}}}, "readings.t.channel"),
        ({"device": "d", "readings": {"t": {"value": 1, "channel": 1.5}}}, "readings.t.channel"),
        ({"device": "d", "ts": "yesterday", "readings": {"t": 1}}, "ts: 'yesterday' is not ISO"),
        ({"device": "d", "ts": "2024-13-01T00:00:00Z", "readings": {"t": 1}}, "ts: "),
        ({"device": "d", "ts": True, "readings": {"t": 1}}, "ts: must be ISO 8601"),
        ({"device": "d", "ts": [2024], "readings": {"t": 1}}, "ts: must be ISO 8601"),
        ({"device": "d", "ts": -1, "readings": {"t": 1}}, "ts: -1 is out of range"),
        ({"device": "d", "ts": 1e300, "readings": {"t": 1}}, "ts: 1e+300 is out of range"),
        ({"device": "d", "ts": 253402300800, "readings": {"t": 1}}, "ts: 253402300800 is out"),
        ({"device": "d", "ts": "0001-01-01T00:00:00Z", "readings": {"t": 1}}, "ts: "),
        ({"device": "d", "id": 1.5, "readings": {"t": 1}}, "id: must be a string or an integer"),
        ({"device": "d", "id": True, "readings": {"t": 1}}, "id: must be a string or an integer"),
        ({"device": "d", "id": "", "readings": {"t": 1}}, "id: must be 1 to 256 characters"),
        ({"device": "d", "id": "k" * (MAX_TEXT + 1), "readings": {"t": 1}}, "id: must be 1 to"),
        ([{"device": "d", "readings": {"t": 1}}, 7], "[1]: must be an object, got number"),
        ([["device", "d"]], "[0]: must be an object, got array"),
        ([], "the array is empty"),
        ("a string", "body must be a JSON object or an array"),
        (42, "body must be a JSON object or an array"),
        (None, "body must be a JSON object or an array"),
    ],
)
def test_refusals_name_the_field(body: object, reason_starts: str) -> None:
    error = refusal(body)
    assert error.reason.startswith(reason_starts), error.reason
    assert error.malformed is False  # the JSON parsed; only its content was wrong


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b'{"device": "d", "readings": {"t": 1}',
        b"{'device': 'd'}",
        b'{"device": "d", "readings": {"t": NaN}}',
        b'{"device": "d", "readings": {"t": Infinity}}',
        b'{"device": "d", "readings": {"t": 1e400}}',  # overflows a double: refused as JSON
        b'{"device": "a\\ud800", "readings": {"t": 1}}',  # lone surrogate
    ],
)
def test_invalid_json_is_malformed(raw: bytes) -> None:
    error = refusal(raw)
    assert error.malformed is True
    assert error.reason.startswith("body is not valid JSON")


@pytest.mark.parametrize(
    ("body", "reason_starts"),
    [
        ({"device": "a\x00b", "readings": {"t": 1}}, "device: must not contain NUL"),
        ({"device": "d", "kind": "k\x00", "readings": {"t": 1}}, "kind: must not contain NUL"),
        ({"device": "d", "id": "\x00", "readings": {"t": 1}}, "id: must not contain NUL"),
        ({"device": "d", "readings": {"t\x00": 1}}, "readings: quantity names must not contain"),
        ({"device": "d", "readings": {"t": {"value": 1, "unit": "\x00C"}}}, "readings.t.unit"),
    ],
)
def test_nul_characters_are_refused(body: object, reason_starts: str) -> None:
    # PostgreSQL text cannot hold NUL: accepting one would fail the whole batch's commit.
    error = refusal(body)
    assert error.reason.startswith(reason_starts), error.reason
    assert "\x00" not in error.reason


def test_refusal_reasons_never_carry_nul_from_field_names() -> None:
    for body in (
        {"device": "d", "readings": {"t": 1}, "x\x00": 1},
        {"device": "d", "readings": {"t\x00": "text"}},
        {"device": "d", "readings": {"t": {"value": 1, "u\x00": 1}}},
    ):
        assert "\x00" not in refusal(body).reason


# --- device ids, duplicate keys, UTF-8 (issue 10) ------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            {"device": "a\u001b[31m", "readings": {"t": 1}},
            "device 'a\\x1b[31m' contains the control character U+001B at position 1",
        ),
        (
            [
                {"device": "ok", "readings": {"t": 1}},
                {"device": "ad\u202emin", "readings": {"t": 1}},
            ],
            "[1].device 'ad\\u202emin' contains the invisible format character U+202E",
        ),
        ({"device": "dev\u200b", "readings": {"t": 1}}, "U+200B at position 3"),
        ({"device": "dev\u0085", "readings": {"t": 1}}, "control character U+0085"),
    ],
)
def test_device_ids_must_be_printable(body: object, reason: str) -> None:
    error = refusal(body)
    assert reason in error.reason, error.reason
    assert error.cause == "bad_device_id" and not error.malformed  # 422, quarantined
    assert error.reason.isprintable()


def test_duplicate_keys_are_refused_with_the_key_and_place() -> None:
    error = refusal(b'{"device": "a", "readings": {"t": 1}, "device": "b"}')
    assert error.reason.startswith("body: key 'device' appears twice")
    assert error.cause == "duplicate_key" and not error.malformed
    nested = (
        b'[{"device": "a", "readings": {"t": 1}}, {"device": "b", "readings": {"t": 1, "t": 2}}]'
    )
    assert refusal(nested).reason.startswith("[1].readings: key 't' appears twice")


def test_colons_and_escapes_without_duplicates_are_accepted() -> None:
    raw = b'{"device": "gw:01", "ts": "2024-03-01T10:00:00Z", "readings": {"t\\u00e9": 1}}'
    [message] = decode(raw, META, RECEIVED)
    assert message.device == "gw:01" and message.readings[0].quantity == "t\u00e9"


def test_invalid_utf8_says_so_and_where() -> None:
    error = refusal(b'{"device": "\xff\xfe", "readings": {"t": 1}}')
    assert error.reason == "body is not UTF-8: invalid byte 0xff at offset 12"
    assert error.malformed and error.cause == "not_utf8"


# --- fuzzing ----------------------------------------------------------------------------------


def check_contract(raw: bytes) -> None:
    """decode returns well-formed messages or raises DecodeError; nothing else escapes."""
    try:
        out = decode(raw, META, RECEIVED)
    except DecodeError as error:
        assert isinstance(error.reason, str) and error.reason
        assert "\x00" not in error.reason  # the reason is stored as text in quarantine
        assert error.reason.isprintable()  # shown escaped, never raw, on a terminal
        return
    assert isinstance(out, list) and out
    for message in out:
        assert isinstance(message, Decoded)
        assert isinstance(message.device, str) and 0 < len(message.device) <= MAX_TEXT
        assert message.device.isprintable()  # no control, format or invisible character
        assert message.readings
        for reading in message.readings:
            assert isinstance(reading, Reading)
            assert reading.quantity and "\x00" not in reading.quantity
            assert reading.value is None or math.isfinite(reading.value)
            assert 0 <= reading.channel <= 65535
            assert 0 <= reading.measured_at < 253402300800
        if message.idempotency_key is not None:
            assert 0 < len(message.idempotency_key) <= MAX_TEXT


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes(raw: bytes) -> None:
    check_contract(raw)


@FUZZ
@given(json_values)
def test_fuzz_arbitrary_json(value: object) -> None:
    check_contract(orjson.dumps(value))


# Text a valid message may carry: anything but NUL (refused, see test_nul_characters_are_refused).
no_nul = st.characters(codec="utf-8", exclude_characters="\x00")
# What a device id may hold: printable characters (str.isprintable), see test_device_ids_*.
printable = st.characters(
    codec="utf-8", exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs")
) | st.just(" ")
quantities = st.text(no_nul, min_size=1, max_size=12)
reading_specs = (
    st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.booleans()
    | st.none()
    | st.fixed_dictionaries(
        {"value": st.floats(allow_nan=False, allow_infinity=False) | st.none()},
        optional={
            "unit": st.text(no_nul, min_size=1, max_size=6).filter(str.strip),
            "channel": st.integers(0, 65535),
        },
    )
)
valid_messages = st.fixed_dictionaries(
    {
        "device": st.text(printable, min_size=1, max_size=30).filter(str.strip),
        "readings": st.dictionaries(quantities, reading_specs, min_size=1, max_size=4),
    },
    optional={
        "kind": st.sampled_from(["efento", "thermo", "soil probe"]),
        "ts": st.integers(0, 4_000_000_000)
        | st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1)).map(
            datetime.isoformat
        ),
        "id": st.text(no_nul, min_size=1, max_size=20) | st.integers(0, 2**63 - 1),
    },
)


@FUZZ
@given(st.lists(valid_messages, min_size=1, max_size=3), st.booleans())
def test_fuzz_valid_messages_decode(messages: list[dict[str, Any]], as_array: bool) -> None:
    body: object = messages if as_array or len(messages) > 1 else messages[0]
    out = decode(orjson.dumps(body), META, RECEIVED)
    check_contract(orjson.dumps(body))
    assert [d.device for d in out] == [m["device"] for m in messages]
    assert [len(d.readings) for d in out] == [len(m["readings"]) for m in messages]
    assert [d.kind for d in out] == [m.get("kind") for m in messages]
    keys = [None if m.get("id") is None else str(m["id"]) for m in messages]
    assert [d.idempotency_key for d in out] == keys


@FUZZ
@given(st.text(min_size=1, max_size=12))
def test_fuzz_any_device_text_is_accepted_only_when_printable(device: str) -> None:
    raw = orjson.dumps({"device": device, "readings": {"t": 1}})
    check_contract(raw)
    if device.strip() and device.isprintable():
        assert decode(raw, META, RECEIVED)[0].device == device
    else:
        refusal(raw)


MUTATION_KEYS = ["device", "kind", "ts", "readings", "id", "extra", "value", "unit", "channel"]


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    """A valid message with one to three random edits deep inside it."""
    body: Any = draw(st.lists(valid_messages, min_size=1, max_size=2))
    if len(body) == 1 and draw(st.booleans()):
        body = body[0]
    for _ in range(draw(st.integers(1, 3))):
        target = body
        # Walk down to a random dict (or list) inside the body.
        while True:
            children = (
                list(target.values())
                if isinstance(target, dict)
                else target
                if isinstance(target, list)
                else []
            )
            nested = [c for c in children if isinstance(c, dict | list)]
            if not nested or draw(st.booleans()):
                break
            target = draw(st.sampled_from(nested))
        action = draw(st.sampled_from(["set", "delete", "add"]))
        if isinstance(target, list):
            if action == "delete" and target:
                target.pop(draw(st.integers(0, len(target) - 1)))
            else:
                target.append(draw(json_values))
        elif action == "delete" and target:
            target.pop(draw(st.sampled_from(sorted(target))))
        else:
            key = draw(st.sampled_from(MUTATION_KEYS) | st.text(max_size=6))
            target[key] = draw(json_values)
    return orjson.dumps(body)


@FUZZ
@given(mutated_messages())
def test_fuzz_mutated_messages(raw: bytes) -> None:
    check_contract(raw)
