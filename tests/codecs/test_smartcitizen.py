"""The Smart Citizen codec on recorded kit messages: readings, raw, hello, info, and refusals."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fieldbridge.codecs import build_codec
from fieldbridge.codecs.smartcitizen import QUANTITY, build, builtin, decode
from fieldbridge.errors import ConfigError, DecodeError
from fieldbridge.model import Decoded, Reading, Refusal
from tests.support import paths

FIXTURES = paths.FIXTURES / "smartcitizen" / "messages.json"
MESSAGES: dict[str, dict[str, str]] = {
    m["name"]: m for m in json.loads(FIXTURES.read_text(encoding="utf-8"))["messages"]
}
RECEIVED = datetime(2026, 11, 23, 8, 0, tzinfo=UTC).timestamp()
DAY = 86400.0


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def fixture(name: str, codec: Any = decode, received: float = RECEIVED) -> list[Any]:
    """What the codec makes of a recorded message: Decoded messages, then any Refusal."""
    message = MESSAGES[name]
    return list(codec(message["payload"].encode(), {"topic": message["topic"]}, received))


def refusal(payload: bytes, topic: str, codec: Any = decode) -> DecodeError:
    with pytest.raises(DecodeError) as caught:
        codec(payload, {"topic": topic}, RECEIVED)
    return caught.value


def readings_payload(recorded_at: str, *sensors: tuple[object, object]) -> bytes:
    items = [{"id": sid, "value": value} for sid, value in sensors]
    return orjson.dumps({"data": [{"recorded_at": recorded_at, "sensors": items}]})


# --- recorded messages ------------------------------------------------------------------------


def test_seed_example_maps_every_sensor_through_the_catalogue() -> None:
    [message] = fixture("readings_seed_example")
    at = epoch("2018-01-11T17:52:51")
    assert message.device == "decode_test"
    assert message.kind == "smartcitizen"
    assert message.attributes is None
    assert message.require_registered is False
    assert [(r.quantity, r.value, r.unit, r.channel, r.key) for r in message.readings] == [
        ("battery", 95.0, "%", 10, f"10@{int(at)}"),
        ("noise", 66.35234, "dBC", 29, f"29@{int(at)}"),
        ("humidity", 39.21178, "%", 13, f"13@{int(at)}"),
        ("temperature", 25.55512, "°C", 12, f"12@{int(at)}"),
        ("light", 578.6607, "lx", 14, f"14@{int(at)}"),
    ]
    assert {r.measured_at for r in message.readings} == {at}
    assert all(r.extra is None for r in message.readings)
    assert message.idempotency_key is not None
    assert message.idempotency_key.startswith("decode_test/")


def test_docs_example_naive_times_are_utc_and_unknown_ids_are_kept_and_marked() -> None:
    [message] = fixture("readings_docs_two_items")
    assert message.device == "a1b2c3"
    assert message.readings == (
        Reading(
            "sensor_1",
            21.0,
            epoch("2016-06-08T10:30:00"),
            1,
            None,
            {"unknown_sensor": True},
            f"1@{int(epoch('2016-06-08T10:30:00'))}",
        ),
        Reading(
            "sensor_1",
            22.0,
            epoch("2016-06-08T10:35:00"),
            1,
            None,
            {"unknown_sensor": True},
            f"1@{int(epoch('2016-06-08T10:35:00'))}",
        ),
    )


def test_raw_spec_example() -> None:
    [message] = fixture("raw_spec_example")
    at = epoch("2024-09-25T13:19:38")
    assert message.device == "a1b2c3"
    assert [(r.quantity, r.value, r.channel, r.measured_at) for r in message.readings] == [
        ("sensor_1", 21.0, 1, at),
        ("humidity", 66.0, 13, at),
    ]


def test_raw_negative_floats_spaces_and_the_time_in_any_position() -> None:
    [message] = fixture("raw_negative_float_spaces")
    assert [(r.channel, r.value) for r in message.readings] == [
        (100, -2000.12345),
        (21, 12345.2345),
    ]
    assert {r.measured_at for r in message.readings} == {epoch("2024-09-25T13:19:38")}


def test_non_ascii_is_stripped_as_the_platform_does() -> None:
    [message] = fixture("raw_non_ascii")
    assert [r.channel for r in message.readings] == [100, 21]
    body = '{"data":[{"recorded_at":"2018-01-11T17:52:51Zé","sensors":[{"id":10,"value":9}]}]}'
    for payload in (body.encode(), body.encode("latin-1"), b"\xff\xfe" + body.encode()):
        [out] = decode(payload, {"topic": "device/sck/tok123/readings"}, RECEIVED)
        assert out.readings[0].measured_at == epoch("2018-01-11T17:52:51")
        assert out.readings[0].value == 9.0


def test_hello_marks_the_device_seen_without_readings() -> None:
    assert fixture("hello") == [Decoded("a1b2c3", (), kind="smartcitizen")]


def test_info_becomes_the_hardware_info_attribute() -> None:
    [message] = fixture("info")
    assert message.readings == ()
    assert message.attributes == {
        "hardware_info": {"hw_ver": "2.1", "sam_ver": "0.9.8-ce87e64", "esp_ver": "0.9.8-ce87e64"}
    }


def test_the_same_measurement_has_one_key_whichever_form_carries_it() -> None:
    raw = decode(
        b"{t:2024-09-25T13:19:38Z,1:21,13:66}", {"topic": "device/sck/k/readings/raw"}, RECEIVED
    )
    json_form = decode(
        readings_payload("2024-09-25T13:19:38Z", (1, 21), (13, 66)),
        {"topic": "device/sck/k/readings"},
        RECEIVED,
    )
    assert raw[0].idempotency_key == json_form[0].idempotency_key
    later = decode(
        b"{t:2024-09-25T13:19:39Z,1:21,13:66}", {"topic": "device/sck/k/readings/raw"}, RECEIVED
    )
    other_kit = decode(
        b"{t:2024-09-25T13:19:38Z,1:21,13:66}", {"topic": "device/sck/j/readings/raw"}, RECEIVED
    )
    keys = {raw[0].idempotency_key, later[0].idempotency_key, other_kit[0].idempotency_key}
    assert len(keys) == 3


def test_values_as_text_null_and_booleans() -> None:
    payload = readings_payload(
        "2024-09-25T13:19:38Z", (10, "21.5"), (12, None), (13, "n/a"), (14, True), (55, "NaN")
    )
    [message] = decode(payload, {"topic": "device/sck/tok/readings"}, RECEIVED)
    assert [(r.value, r.extra) for r in message.readings] == [
        (21.5, None),
        (None, None),
        (None, {"raw": "n/a"}),
        (1.0, None),
        (None, {"raw": "NaN"}),
    ]


def test_ids_as_numeric_text_and_sensor_keys() -> None:
    payload = readings_payload("2024-09-25T13:19:38Z", ("10", 1), ("co2_ext", 400))
    [message] = decode(payload, {"topic": "device/sck/tok/readings"}, RECEIVED)
    assert [(r.quantity, r.channel, r.extra) for r in message.readings] == [
        ("battery", 10, None),
        ("co2_ext", 0, None),
    ]


def test_a_topic_prefix_before_device_is_allowed() -> None:
    [message] = decode(b"x", {"topic": "site-a/device/sck/tok/hello"}, RECEIVED)
    assert message.device == "tok"


# --- the platform's raw grammar (app/grammars/raw_message.tt) --------------------------------


def test_raw_null_values_are_dropped_and_the_rest_kept() -> None:
    [message] = fixture("raw_spec_null")
    assert [(r.channel, r.value) for r in message.readings] == [(100, -2000.12345)]


def test_raw_handler_spec_with_spaces_after_commas() -> None:
    [message] = fixture("raw_handler_spec")
    assert message.device == "aA1234"
    at = epoch("2017-03-24T13:35:14")
    assert [(r.quantity, r.channel, r.value, r.measured_at) for r in message.readings] == [
        ("sensor_1", 1, 48.45, at),
        ("humidity", 13, 66.0, at),
        ("temperature", 12, 28.0, at),
        ("battery", 10, 4.45, at),
    ]


def test_raw_time_anywhere_and_no_commas_between_pairs() -> None:
    [anywhere] = fixture("raw_spec_time_anywhere")
    assert [r.channel for r in anywhere.readings] == [100, 21]
    [bare] = fixture("raw_no_commas")
    assert [(r.channel, r.value) for r in bare.readings] == [(1, 21.0), (13, 66.0)]
    assert (
        bare.idempotency_key
        == decode(
            b"{t:2024-09-25T13:19:38Z,1:21,13:66}",
            {"topic": "device/sck/a1b2c3/readings/raw"},
            RECEIVED,
        )[0].idempotency_key
    )


def test_raw_packed_values_are_kept_as_text_beside_the_numbers() -> None:
    [message] = fixture("raw_packed_value")
    assert [(r.quantity, r.channel, r.value, r.extra) for r in message.readings] == [
        ("sensor_241", 241, None, {"raw": "0-0-12-500-88-0", "unknown_sensor": True}),
        ("battery", 10, 88.0, None),
    ]


def test_raw_as_the_firmware_writes_it_names_the_sen5x_pm_readings() -> None:
    [message] = fixture("raw_firmware")
    named = {r.channel: (r.quantity, r.unit) for r in message.readings}
    assert named[193] == ("sen5x_pm_1", "µg/m³")
    assert named[194] == ("sen5x_pm_2_5", "µg/m³")
    assert named[195] == ("sen5x_pm_4", "µg/m³")
    assert named[196] == ("sen5x_pm_10", "µg/m³")
    assert all(r.extra is None for r in message.readings)  # no id is unknown


def test_raw_empty_has_no_timestamp_and_a_time_alone_is_a_message_without_readings() -> None:
    with pytest.raises(DecodeError, match=r"t\.recorded_at: no timestamp given"):
        fixture("raw_spec_empty")
    [message] = fixture("raw_spec_timestamp_only")
    assert message.readings == ()


@pytest.mark.parametrize(
    ("payload", "value", "extra"),
    [
        (b"{t:2024-09-25T13:19:38Z,10:--2}", None, {"raw": "--2"}),
        (b"{t:2024-09-25T13:19:38Z,10:1.-5}", None, {"raw": "1.-5"}),
        (b"{t:2024-09-25T13:19:38Z,10:-0.5}", -0.5, None),
    ],
)
def test_raw_values_the_number_rule_admits(payload: bytes, value: float | None, extra: Any) -> None:
    [message] = decode(payload, {"topic": "device/sck/t/readings/raw"}, RECEIVED)
    assert [(r.value, r.extra) for r in message.readings] == [(value, extra)]


@pytest.mark.parametrize("sid", ["-1", "1-2", "70000"])
def test_raw_ids_that_are_not_sensor_ids_refuse_the_message(sid: str) -> None:
    error = refusal(f"{{t:2024-09-25T13:19:38Z,{sid}:1}}".encode(), "device/sck/t/readings/raw")
    assert error.reason.startswith("raw readings: id: must be a sensor id from 0 to 65535")


# --- times the platform's Time.parse reads ----------------------------------------------------


def test_slash_dates_are_read() -> None:
    [message] = fixture("readings_slash_date")
    assert message.readings[0].measured_at == epoch("2024-09-25T13:19:38")


def test_the_handler_spec_time_with_a_space_and_z() -> None:
    [message] = fixture("readings_handler_spec")
    assert message.device == "aA1234"
    assert message.readings[0].measured_at == epoch("2016-06-08T10:30:00")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024/09/25 13:19:38", "2024-09-25T13:19:38"),
        ("2024/9/5 13:19", "2024-09-05T13:19:00"),
        ("2024/09/25", "2024-09-25T00:00:00"),
        ("2024-09-25 13:19:38 UTC", "2024-09-25T13:19:38"),
        ("2024/09/25 13:19:38 GMT", "2024-09-25T13:19:38"),
        ("2024-09-25 15:19:38 +0200", "2024-09-25T13:19:38"),
        ("2024/09/25T13:19:38.250Z", "2024-09-25T13:19:38.250"),
        ("20240925T131938Z", "2024-09-25T13:19:38"),
    ],
)
def test_other_time_forms(text: str, expected: str) -> None:
    [message] = decode(
        readings_payload(text, (10, 1)), {"topic": "device/sck/t/readings"}, RECEIVED
    )
    assert message.readings[0].measured_at == epoch(expected)


@pytest.mark.parametrize(
    "text", ["2024/13/25 13:19:38", "2024/09/25 25:00", "25/09/2024", "2024-09-25 13:19:38 +2500"]
)
def test_impossible_times_are_still_refused(text: str) -> None:
    error = refusal(readings_payload(text, (10, 1)), "device/sck/t/readings")
    assert "is not a time" in error.reason


# --- device/inventory (factory-test reports) --------------------------------------------------


def test_inventory_reports_are_kept_on_the_inventory_device() -> None:
    [report] = fixture("inventory_firmware")
    assert report == Decoded(
        "inventory",
        (),
        kind="smartcitizen",
        attributes={"inventory": json.loads(MESSAGES["inventory_firmware"]["payload"])},
    )
    [spec] = fixture("inventory_handler_spec")
    assert spec.device == "inventory"
    assert spec.attributes == {"inventory": {"random_property": "random_result"}}
    assert decode(b"{}", {"topic": "bridge/device/inventory"}, RECEIVED)[0].device == "inventory"


def test_inventory_must_be_a_json_object() -> None:
    assert refusal(b"[1]", "device/inventory").reason.startswith("inventory: the payload must")
    assert refusal(b"not json", "device/inventory").malformed


def test_inventory_follows_tokens_and_registered_only_as_the_inventory_device() -> None:
    error = refusal(b"{}", "device/inventory", build({"tokens": ["abc123"]}))
    assert error.cause == "unknown_token"
    [report] = build({"tokens": ["inventory"], "registered_only": True})(
        b"{}", {"topic": "device/inventory"}, RECEIVED
    )
    assert report.require_registered


# --- the future-timestamp rule ----------------------------------------------------------------


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_exactly_one_day_ahead_is_accepted() -> None:
    ahead = iso(RECEIVED + DAY)
    [message] = decode(
        readings_payload(ahead, (10, 1)), {"topic": "device/sck/t/readings"}, RECEIVED
    )
    assert message.readings[0].measured_at == RECEIVED + DAY
    [raw] = decode(f"{{t:{ahead},10:1}}".encode(), {"topic": "device/sck/t/readings/raw"}, RECEIVED)
    assert raw.readings[0].measured_at == RECEIVED + DAY


def test_more_than_one_day_ahead_is_refused_with_the_kit_clock_named() -> None:
    ahead = iso(RECEIVED + DAY + 1)
    error = refusal(readings_payload(ahead, (10, 1)), "device/sck/t/readings")
    assert f"data[0].recorded_at: {ahead!r} is more than 1 day in the future" in error.reason
    assert "received 2026-11-23T08:00:00Z" in error.reason
    assert "clock" in error.reason
    error = refusal(f"{{t:{ahead},10:1}}".encode(), "device/sck/t/readings/raw")
    assert "t.recorded_at" in error.reason and "1 day in the future" in error.reason


def test_a_bad_item_is_refused_alone_and_the_others_are_kept() -> None:
    message, refused = fixture("readings_catch_up_one_future")
    assert isinstance(message, Decoded) and isinstance(refused, Refusal)
    assert [(r.quantity, r.value, r.measured_at) for r in message.readings] == [
        ("battery", 81.0, epoch("2026-11-22T23:55:00")),
        ("temperature", 12.4, epoch("2026-11-22T23:55:00")),
        ("battery", 80.0, epoch("2026-11-23T00:00:00")),
        ("temperature", 12.1, epoch("2026-11-23T00:00:00")),
    ]
    assert refused.reason.startswith(
        "data[1].recorded_at: '2033-05-18T03:33:20Z' is more than 1 day in the future"
    )
    # Quarantine keeps the refused item alone, as a payload of its own.
    assert orjson.loads(refused.raw or b"") == {
        "data": [
            {
                "recorded_at": "2033-05-18T03:33:20Z",
                "sensors": [{"id": 10, "value": 81}, {"id": 55, "value": 12.3}],
            }
        ]
    }
    # The same valid items make the same message, whatever was refused beside them.
    alone = decode(
        orjson.dumps(
            {
                "data": [
                    orjson.loads(MESSAGES["readings_catch_up_one_future"]["payload"])["data"][i]
                    for i in (0, 2)
                ]
            }
        ),
        {"topic": "device/sck/a1b2c3/readings"},
        RECEIVED,
    )
    assert alone == [message]


def test_the_storer_specs_unreadable_time_refuses_only_its_item() -> None:
    message, refused = fixture("readings_storer_spec_bad_time")
    assert isinstance(message, Decoded) and isinstance(refused, Refusal)
    assert [(r.channel, r.value, r.measured_at) for r in message.readings] == [
        (12, 21.0, epoch("2018-06-08T10:30:00"))
    ]
    assert refused.reason.startswith("data[0].recorded_at: 'not time info here' is not a time")


def test_a_payload_without_a_valid_item_is_refused_whole_with_every_reason() -> None:
    body = {
        "data": [
            {"recorded_at": "2024-09-25T13:19:38Z", "sensors": [{"id": 10, "value": 1}]},
            {"recorded_at": iso(RECEIVED + 3 * DAY), "sensors": [{"id": 10, "value": 2}]},
        ]
    }
    body["data"][0]["recorded_at"] = None
    error = refusal(orjson.dumps(body), "device/sck/t/readings")
    assert error.reason.startswith("no valid item in data: data[0].recorded_at: no timestamp")
    assert "; data[1].recorded_at:" in error.reason


def test_the_past_is_fine() -> None:
    payload = readings_payload("1999-12-31 23:59:59", (10, 1))
    [message] = decode(payload, {"topic": "device/sck/t/readings"}, RECEIVED)
    assert message.readings[0].measured_at == epoch("1999-12-31T23:59:59")


@pytest.mark.parametrize(
    ("recorded_at", "reason"),
    [
        (None, "data[0].recorded_at: no timestamp given"),
        ("", "data[0].recorded_at: no timestamp given"),
        (1717243200, "data[0].recorded_at: must be a time as text"),
        ("yesterday", "data[0].recorded_at: 'yesterday' is not a time"),
        ("2024-13-01T00:00:00Z", "is not a time"),
    ],
)
def test_bad_recorded_at(recorded_at: object, reason: str) -> None:
    body = {"data": [{"recorded_at": recorded_at, "sensors": [{"id": 10, "value": 1}]}]}
    assert reason in refusal(orjson.dumps(body), "device/sck/t/readings").reason


def test_raw_without_a_time_has_no_timestamp() -> None:
    assert "no timestamp given" in refusal(b"{10:1}", "device/sck/t/readings/raw").reason


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"ceci n'est pas un message",
        b"{t:2024-09-25 13:19:38,1:2}",
        b"{t:2024-09-25T13:19:38Z,1:abc}",
        b"{t:2024-09-25T13:19:38Z,1:2",
        b"{t:2024-09-25T13:19:38Z,a:1}",
        b"{t:2024-09-25T13:19:38Z,1:2,,3:4}",
        b"{t:2024-09-25T13:19:38Z,1:2.}",
        b"{t:2024-09-25T13:19:38Z,1:2;3:4}",
        b"{t:2024-09-25T13:19:38Z,1:213:66}",
        b"{t:2024-09-25T13:19:38Z,\t1:2}",
        b"",
        b'{"data":[]}',
    ],
)
def test_malformed_raw_grammar_is_refused_as_malformed(payload: bytes) -> None:
    error = refusal(payload, "device/sck/t/readings/raw")
    assert error.malformed
    assert "raw readings" in error.reason


def test_raw_sensor_ids_beyond_the_channel_range_are_refused() -> None:
    error = refusal(b"{t:2024-09-25T13:19:38Z,70000:1}", "device/sck/t/readings/raw")
    assert error.reason == (
        "raw readings: id: must be a sensor id from 0 to 65535 or a sensor key, got 70000"
    )


def test_raw_reason_quotes_the_part_that_failed() -> None:
    error = refusal(b"{t:2024-09-25T13:19:38Z,1:21,13:sixty}", "device/sck/t/readings/raw")
    assert "'13:sixty' is neither t:<YYYY-MM-DDTHH:MM:SSZ> nor <sensor id>:<value>" in error.reason


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "readings: payload is not valid JSON"),
        (b"[]", '"data" is missing or empty'),
        (b'{"data": []}', '"data" is missing or empty'),
        (b'{"nodata": 1}', '"data" is missing or empty'),
        (b'{"data": [1]}', "data[0]: must be an object"),
        (b'{"data": [{"recorded_at": "2024-09-25T13:19:38Z"}]}', "data[0].sensors: required"),
        (
            b'{"data": [{"recorded_at": "2024-09-25T13:19:38Z", "sensors": [5]}]}',
            "data[0].sensors[0]: must be an object",
        ),
        (
            b'{"data": [{"recorded_at": "2024-09-25T13:19:38Z", "sensors": [{"id": 1.5}]}]}',
            "data[0].sensors[0].id: must be a sensor id",
        ),
        (
            b'{"data": [{"recorded_at": "2024-09-25T13:19:38Z", "sensors": [{"id": 70000}]}]}',
            "data[0].sensors[0].id: must be a sensor id from 0 to 65535",
        ),
        (
            b'{"data": [{"recorded_at": "2024-09-25T13:19:38Z", '
            b'"sensors": [{"id": 1, "value": []}]}]}',
            "data[0].sensors[0].value: must be a number or text",
        ),
    ],
)
def test_bad_readings_say_where(payload: bytes, reason: str) -> None:
    assert reason in refusal(payload, "device/sck/t/readings").reason


def test_duplicate_keys_are_refused_with_the_place() -> None:
    payload = (
        b'{"data": [{"recorded_at": "2024-09-25T13:19:38Z", '
        b'"sensors": [{"id": 10, "value": 1, "value": 2}]}]}'
    )
    error = refusal(payload, "device/sck/t/readings")
    assert error.reason.startswith("readings: data[0].sensors[0]: key 'value' appears twice")
    assert error.cause == "duplicate_key"
    info = refusal(b'{"mac": "a", "mac": "b"}', "device/sck/t/info")
    assert info.reason.startswith("info: payload: key 'mac' appears twice")


def test_a_token_with_a_control_character_is_refused_by_code_point() -> None:
    error = refusal(b"hi", "device/sck/ab\x1b[0m/hello")
    assert error.reason.startswith(
        "kit token in the topic 'ab\\x1b[0m' contains the control character U+001B"
    )
    assert error.cause == "bad_device_id"
    nul = refusal(b"hi", "device/sck/a\x00b/hello").reason
    assert "control character U+0000" in nul and "longer than" not in nul


def test_info_must_be_a_json_object() -> None:
    assert refusal(b"[1]", "device/sck/t/info").reason.startswith("info: the payload must be")
    assert refusal(b"{", "device/sck/t/info").malformed


@pytest.mark.parametrize(
    "topic",
    [
        "device/sck/t/status",
        "device/sck//readings",
        "sensors/t/readings",
        "device/sck/t/readings/x",
    ],
)
def test_topics_that_are_not_smart_citizen_messages(topic: str) -> None:
    assert "is not device/sck/<token>/readings" in refusal(b"{}", topic).reason


def test_without_a_topic_the_codec_says_it_needs_mqtt() -> None:
    with pytest.raises(DecodeError, match="use it on an MQTT source"):
        decode(b"{}", {"remote": "127.0.0.1"}, RECEIVED)


# --- options ----------------------------------------------------------------------------------


def test_unknown_token_is_refused_and_labelled_for_the_metric() -> None:
    codec = build({"tokens": ["abc123", "def456"]})
    assert codec(b"hi", {"topic": "device/sck/abc123/hello"}, RECEIVED)[0].device == "abc123"
    error = refusal(b"hi", "device/sck/zzz999/hello", codec)
    assert error.reason == (
        "token 'zzz999' is not in codec_options.tokens of this source; add it there to accept "
        "this kit"
    )
    assert error.cause == "unknown_token"


def test_registered_only_asks_the_commit_to_check_the_registry() -> None:
    codec = build({"registered_only": True})
    for name in ("readings_seed_example", "raw_spec_example", "hello", "info"):
        assert [m.require_registered for m in fixture(name, codec)] == [True]


def test_sensors_option_adds_and_replaces_catalogue_entries() -> None:
    codec = build({"sensors": {"1": {"name": "co2", "unit": "ppm"}, "10": {"name": "batt"}}})
    [message] = codec(
        b"{t:2024-09-25T13:19:38Z,1:400,10:90}", {"topic": "device/sck/t/readings/raw"}, RECEIVED
    )
    assert [(r.quantity, r.unit, r.extra) for r in message.readings] == [
        ("co2", "ppm", None),
        ("batt", None, None),
    ]
    assert builtin()[10].name == "battery"  # the shipped catalogue is not changed


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tokens": []}, "tokens: list at least one token"),
        ({"tokens": ["a/b"]}, "tokens: 'a/b' is not a kit token"),
        ({"tokens": "abc"}, "tokens: Input should be a valid list"),
        ({"registered_only": "maybe"}, "registered_only: Input should be a valid boolean"),
        ({"sensors": {"x": {"name": "a"}}}, "sensors: 'x' is not a sensor id"),
        ({"sensors": {"1": {"name": "bad name"}}}, "sensors.1.name: String should match pattern"),
        ({"colour": 1}, "colour: Extra inputs are not permitted"),
    ],
)
def test_bad_options_name_the_option(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_codec("smartcitizen", options, setting="sources.mqtt.kits.codec")
    assert "sources.mqtt.kits.codec options for codec 'smartcitizen'" in str(caught.value)
    assert message in str(caught.value)


FIRMWARE = json.loads((paths.FIXTURES / "smartcitizen" / "firmware_sensors.json").read_text())


def test_the_catalogue_has_every_id_the_firmware_publishes_with_its_unit() -> None:
    catalogue = builtin()
    units = {"C": "°C", "ug/m3": "µg/m³", "uS/cm": "µS/cm", "um": "µm", "uW/cm2": "µW/cm²"}
    units |= {"lux": "lx", "Deg": "°", "Present": ""}
    ids = {sid for sid, _, _, _ in FIRMWARE["rows"]}
    assert len(ids) == 124
    assert ids <= set(catalogue)
    for sid, _short, title, unit in FIRMWARE["rows"]:
        assert (catalogue[sid].unit or "") == units.get(unit, unit), sid
        assert title in catalogue[sid].title


def test_the_catalogue_script_reads_the_firmware_table(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "smartcitizen_catalogue", paths.ROOT / "scripts" / "smartcitizen_catalogue.py"
    )
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    header = "\n".join(
        f'    OneSensor {{ BOARD_URBAN, 100, SENSOR_{short}, "{short}", "{title}", {sid}, true, 5'
        + (f', "{unit}", false }},' if unit else " },")
        for sid, short, title, unit in FIRMWARE["rows"]
    )
    header += '\n//  OneSensor { BOARD_AUX, 100, SENSOR_X, "GONE", "Gone", 999, true, 1, "V" },'
    header += '\n    OneSensor { BOARD_AUX, 100, SENSOR_Y, "RAW", "Not published", 0, true, 1 },'
    rows = script.firmware_rows(header)
    assert [list(row) for row in rows] == FIRMWARE["rows"]
    current = json.loads(
        (paths.ROOT / "src/fieldbridge/codecs/smartcitizen/sensors.json").read_text("utf-8")
    )
    built = script.rebuild(header, current, "test")
    assert built["sensors"] == current["sensors"]  # the shipped file is what the script makes
    fresh = script.rebuild(header, {"about": "", "sensors": {}}, "test")["sensors"]
    assert fresh["194"] == {"name": "sen5x_pm_2_5", "unit": "µg/m³", "title": "SEN5X PM 2.5"}
    assert fresh["72"]["name"] == "ext_pm_a_2_5"
    assert fresh["10"]["name"] == "batt"


def test_the_shipped_catalogue_is_sound() -> None:
    catalogue = builtin()
    assert len(catalogue) >= 130
    assert {10, 12, 13, 14, 29} <= set(catalogue)  # the seed example's ids
    for sid, sensor in catalogue.items():
        assert 0 <= sid <= 65535
        assert QUANTITY.fullmatch(sensor.name), sensor
        assert sensor.title


# --- fuzzing: never a crash, always messages or a reason --------------------------------------

TOPICS = st.sampled_from(
    [
        "device/sck/tok/readings",
        "device/sck/tok/readings/raw",
        "device/sck/tok/hello",
        "device/sck/tok/info",
        "device/sck/tök/readings",
    ]
) | st.text(max_size=8).map(lambda token: f"device/sck/{token}/hello")
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
sensor = st.fixed_dictionaries(
    {"id": st.integers(-5, 70000) | st.text(max_size=6) | st.floats(), "value": json_leaf}
)
item = st.fixed_dictionaries(
    {
        "recorded_at": st.none()
        | st.text(max_size=25)
        | st.datetimes().map(lambda d: d.isoformat())
        | st.integers(-(2**63), 2**63 - 1),
        "sensors": st.lists(sensor, max_size=4) | json_values,
    }
)
raw_text = st.lists(
    st.sampled_from(
        ["{", "}", ",", ":", "t:", "-", ".", " ", "1", "13", "2024-09-25T13:19:38Z", "é"]
    ),
    max_size=14,
).map("".join)


def check(out: list[Decoded | Refusal]) -> None:
    messages = [m for m in out if isinstance(m, Decoded)]
    assert messages and all(isinstance(m, Decoded | Refusal) for m in out)
    assert all(r.reason for r in out if isinstance(r, Refusal))
    for message in messages:
        assert message.device and message.device.isprintable()
        for reading in message.readings:
            assert reading.value is None or math.isfinite(reading.value)
            assert math.isfinite(reading.measured_at)
            assert reading.measured_at <= RECEIVED + DAY
            assert re.fullmatch(r"\w[\w.-]*@[\d.e+-]+", reading.key or "")
            orjson.dumps(reading.extra)


def outcome(payload: bytes, topic: str) -> None:
    try:
        out = decode(payload, {"topic": topic}, RECEIVED)
    except DecodeError as exc:
        assert exc.reason and "\x00" not in exc.reason
        return
    check(out)


@FUZZ
@given(st.binary(max_size=200), TOPICS)
def test_fuzz_bytes(payload: bytes, topic: str) -> None:
    outcome(payload, topic)


@FUZZ
@given(st.lists(item, min_size=0, max_size=3), TOPICS)
def test_fuzz_reading_shapes(items: list[Any], topic: str) -> None:
    outcome(
        orjson.dumps({"data": items}, option=orjson.OPT_PASSTHROUGH_DATETIME, default=str), topic
    )


@FUZZ
@given(json_values, TOPICS)
def test_fuzz_any_json(value: Any, topic: str) -> None:
    try:
        payload = orjson.dumps(value)
    except orjson.JSONEncodeError:
        return
    outcome(payload, topic)


@FUZZ
@given(raw_text)
def test_fuzz_raw_grammar(text: str) -> None:
    outcome(text.encode(), "device/sck/tok/readings/raw")


def test_the_docs_list_the_whole_catalogue() -> None:
    page = (paths.DOCS / "integrations" / "smartcitizen.md").read_text()
    rows = set(re.findall(r"^\| (\d+) \| `([^`]+)` \| ([^|]*) \|", page, re.MULTILINE))
    shipped = {(str(sid), s.name, s.unit or "") for sid, s in builtin().items()}
    assert {(sid, name, unit.strip()) for sid, name, unit in rows} == shipped
