"""The trap-network codec on recorded messages of every topic family, its refusals and fuzz."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fieldbridge.codecs import build_codec
from fieldbridge.codecs.trapnet import TRAP_EVENT, build, name_fields
from fieldbridge.errors import ConfigError, DecodeError
from fieldbridge.model import (
    Decoded,
    FieldType,
    MessageField,
    MessageType,
    Reading,
    Relay,
    Role,
)
from tests.support import paths

AT = 1_800_000_000.0
CODEC = build({})
FIXTURES = {
    family: {
        m["name"]: m
        for m in json.loads((paths.FIXTURES / "trapnet" / f"{family}.json").read_text())
    }
    for family in ("gateway", "status", "network", "node", "team", "environmental", "bad_ids")
}


def decode(family: str, name: str, codec: Any = CODEC) -> Decoded:
    message = FIXTURES[family][name]
    [decoded] = codec(message["payload"].encode(), {"topic": message["topic"]}, AT)
    assert isinstance(decoded, Decoded)
    return decoded


def refusal(family: str, name: str) -> DecodeError:
    message = FIXTURES[family][name]
    with pytest.raises(DecodeError) as caught:
        CODEC(message["payload"].encode(), {"topic": message["topic"]}, AT)
    return caught.value


def test_a_relayed_data_line_names_node_gateway_and_keeps_its_values_for_the_message_type() -> None:
    d = decode("gateway", "data")
    line = FIXTURES["gateway"]["data"]["payload"]
    assert (d.device, d.kind, d.readings) == ("Air203", "trapnet", ())
    assert d.report is not None
    assert d.report.role is Role.NODE
    assert d.report.relays == (Relay("TTGWCX", Role.GATEWAY),)
    assert d.report.fields == tuple(line.split(",")[2:])
    assert d.attributes == {"last_data": line, "last_data_at": AT}


def test_repeater_items_are_stripped_and_become_relays() -> None:
    d = decode("gateway", "data_via_two_repeaters")
    assert d.report is not None
    assert d.report.relays == (
        Relay("TTGWCX", Role.GATEWAY),
        Relay("RPWaiake", Role.REPEATER),
        Relay("RPTorbay", Role.REPEATER),
    )
    assert d.report.fields == ("0", "1", "3.65", "-101")


def test_an_ok_row_is_a_status_report_of_its_node_or_repeater() -> None:
    repeater = decode("gateway", "repeater_status")
    assert repeater.device == "RPWaiake"
    assert repeater.report is not None
    assert (repeater.report.role, repeater.report.fields) == (Role.REPEATER, None)
    assert repeater.attributes is not None
    assert repeater.attributes["last_status"] == "TTGWCX,RPWaiake,OK,12.6,-88"
    node = decode("gateway", "node_status")
    assert node.attributes is not None and "last_status" in node.attributes
    assert node.report is not None and node.report.role is Role.NODE


@pytest.mark.parametrize(
    ("family", "name", "reason"),
    [
        ("gateway", "gwstatus", "ignored: GWSTATUS row"),
        ("gateway", "test_node", "ignored: test node 'TestNode1'"),
        ("network", "missing", 'ignored: "Status":"Missing"'),
    ],
)
def test_skipped_messages_are_refused_with_cause_ignored(
    family: str, name: str, reason: str
) -> None:
    error = refusal(family, name)
    assert error.cause == "ignored"
    assert error.reason.startswith(reason)


def test_a_status_line_is_the_gateways_with_its_values_for_the_message_type() -> None:
    d = decode("status", "gateway_status")
    assert d.device == "TTGWCX"
    assert d.report is not None
    assert (d.report.role, d.report.fields) == (Role.GATEWAY, ("LoRa32", "1.4.2", "5263", "Y"))
    assert d.attributes == {"last_status": "TTGWCX,LoRa32,1.4.2,5263,Y", "last_status_at": AT}
    assert decode("status", "gateway_status_subtopic").device == "TTGWBayfield"


def test_network_status_fills_the_registry_attributes() -> None:
    d = decode("network", "gateway_by_topic")
    assert d.device == "TTGWCX"
    assert d.attributes is not None
    assert {k: v for k, v in d.attributes.items() if not k.startswith("last_")} == {
        "software": "1.4.2",
        "hardware": "LoRa32",
        "uptime_min": 5263.0,
        "latitude": -36.83,
        "longitude": 174.83,
        "project": "Bayfield",
        "place": "Bayfield School",
    }
    assert [r.quantity for r in d.readings] == ["Uptime", "Latitude", "Longitude"]
    assert "last_status" in d.attributes


def test_network_ids_come_from_the_topic_then_nodeid_then_gateway() -> None:
    gateway = decode("network", "gateway_by_key")
    assert gateway.device == "TTGWBayfield"
    assert gateway.report is not None and gateway.report.role is Role.GATEWAY
    assert gateway.attributes is not None and gateway.attributes["uptime_min"] == 120.0
    node = decode("network", "node_by_key")
    assert node.device == "Trap017"
    assert node.report is not None
    assert node.report.relays == (Relay("TTGWCX", Role.GATEWAY),)
    assert node.attributes is not None
    assert (node.attributes["battery"], node.attributes["rssi"]) == (3.71, -97.0)


def test_node_json_is_data_with_every_top_level_number_as_a_reading() -> None:
    d = decode("node", "node_data")
    assert d.device == "Air203"
    assert [(r.quantity, r.value) for r in d.readings] == [
        ("Temperature", 20.5),
        ("Humidity", 61.0),
        ("VBat", 4.2),
        ("RSSI", -104.0),
    ]
    assert d.attributes is not None
    assert (d.attributes["latitude"], d.attributes["longitude"]) == (-36.84, 174.76)
    assert d.attributes["battery"] == 4.2
    assert "last_data" in d.attributes


def test_team_topics_set_the_team_and_tell_status_from_data() -> None:
    data = decode("team", "team_data")
    assert (data.device, data.report and data.report.team) == ("Trap017", "PestFreeWaiheke")
    assert data.attributes is not None and "last_data" in data.attributes
    status = decode("team", "team_status")
    assert status.device == "Trap018"
    assert status.attributes is not None
    assert status.attributes["uptime_min"] == 42.0
    assert "last_status" in status.attributes
    assert "NodeID" in refusal("team", "team_without_node").reason


def test_trap_events_are_kept_with_their_problem_for_the_trapnz_sink() -> None:
    good = decode("environmental", "trigger_open")
    assert good.device == "Trap017"
    assert good.report is not None and good.report.creates is False
    assert good.report.relays == (Relay("TTGWCX", Role.GATEWAY),)
    event, vbat = good.readings
    assert (event.quantity, event.value, event.measured_at) == (TRAP_EVENT, None, AT)
    assert event.extra == {"event": "T", "state": "O", "gateway": "TTGWCX", "trap_id": "T-4411"}
    assert (vbat.quantity, vbat.value) == ("VBat", 3.71)
    assert good.attributes == {"battery": 3.71, "trap_id": "T-4411"}
    bad_event = decode("environmental", "bad_event").readings[0]
    assert bad_event.extra == {"event": "Trigger", "state": "O", "problem": "bad_event"}
    bad_state = decode("environmental", "bad_state").readings[0]
    assert bad_state.extra == {"event": "T", "state": "X", "problem": "bad_state"}
    assert decode("environmental", "heartbeat_closed").readings[0].extra == {
        "event": "H",
        "state": "C",
    }


@pytest.mark.parametrize("name", list(FIXTURES["bad_ids"]))
def test_invalid_node_ids_are_refused_with_the_reason(name: str) -> None:
    error = refusal("bad_ids", name)
    assert error.cause == "invalid_node_id"
    assert "node id" in error.reason or "monitor's own id" in error.reason


def test_other_topics_under_the_prefix_are_ignored_and_the_prefix_is_configurable() -> None:
    with pytest.raises(DecodeError) as caught:
        CODEC(b"Status received", {"topic": "AKLC/Control/Trap017"}, AT)
    assert caught.value.cause == "ignored"
    codec = build_codec("trapnet", {"prefix": "WAIHEKE"}, setting="sources.mqtt[0].codec")
    [d] = codec(b"GW1,Trap9,1,2", {"topic": "WAIHEKE/Gateway"}, AT)
    assert d.device == "Trap9"
    # With another prefix, AKLC is a team's topic: JSON with NodeID is expected.
    with pytest.raises(DecodeError):
        codec(b"GW1,Trap9,1,2", {"topic": "AKLC/Gateway"}, AT)
    with pytest.raises(ConfigError, match="prefix"):
        build_codec("trapnet", {"prefix": "A/B"}, setting="sources.mqtt[0].codec")
    with pytest.raises(ConfigError, match="prefx: Extra inputs"):
        build_codec("trapnet", {"prefx": "A"}, setting="sources.mqtt[0].codec")


def test_a_message_type_names_values_tags_and_text() -> None:
    air = MessageType(
        "air",
        (
            MessageField("Temperature", FieldType.FLOAT),
            MessageField("Humidity", FieldType.FLOAT),
            MessageField("Light", FieldType.INTEGER),
            None,
            MessageField("VBat", FieldType.FLOAT),
            MessageField("RSSI", FieldType.INTEGER),
            MessageField("Latitude", FieldType.FLOAT),
            MessageField("Longitude", FieldType.FLOAT),
            MessageField("Site", FieldType.TEXT, is_tag=True),
            MessageField("Version", FieldType.TEXT),
        ),
    )
    values = ["20.0", "60.0", "11758.0", "6423.0", "4.3", "-109", "-36.83", "174.83", "Bayfield"]
    readings, attributes = name_fields(values, air, AT)
    tags = {"tags": {"Site": "Bayfield"}}
    assert readings == (
        Reading("Temperature", 20.0, AT, extra=tags),
        Reading("Humidity", 60.0, AT, extra=tags),
        Reading("Light", 11758.0, AT, extra=tags),
        Reading("VBat", 4.3, AT, extra=tags),
        Reading("RSSI", -109.0, AT, extra=tags),
        Reading("Latitude", -36.83, AT, extra=tags),
        Reading("Longitude", 174.83, AT, extra=tags),
    )
    # Version is past the line's end: left out. Named values fill the registry attributes.
    assert attributes == {
        "battery": 4.3,
        "rssi": -109.0,
        "latitude": -36.83,
        "longitude": 174.83,
    }
    odd, _ = name_fields(["x"], MessageType("t", (MessageField("T", FieldType.FLOAT),)), AT)
    assert odd == (Reading("T", None, AT, extra={"raw": "x"}),)


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOPICS = st.sampled_from(
    [
        "AKLC/Status",
        "AKLC/Gateway",
        "AKLC/Gateway/GW1",
        "AKLC/Network",
        "AKLC/Network/N1",
        "AKLC/Node/N1",
        "AKLC/Node",
        "AKLC",
        "EnvironmentalServices/x",
        "Team1/x",
        "",
    ]
)
CSV = st.lists(
    st.one_of(
        st.sampled_from(["GW1", "N1", "RPx", "OK", "Test1", "GWSTATUS", "", "1.5"]),
        st.text(max_size=8),
    ),
    max_size=8,
).map(lambda items: ",".join(items).encode())
JSON_OBJ = st.dictionaries(
    st.sampled_from(
        ["NodeID", "Gateway", "Event", "State", "Status", "VBat", "TrapID", "Uptime(s)", "x"]
    ),
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(max_size=8),
        st.lists(st.integers(), max_size=2),
    ),
).map(lambda d: json.dumps(d).encode())


@FUZZ
@given(TOPICS, st.one_of(st.binary(max_size=120), CSV, JSON_OBJ))
def test_fuzz_any_payload_decodes_or_is_refused_with_a_reason(topic: str, payload: bytes) -> None:
    try:
        out = CODEC(payload, {"topic": topic}, AT)
    except DecodeError as exc:
        assert exc.reason
        return
    assert out and all(isinstance(d, Decoded) and d.device for d in out)
    for d in out:
        for r in d.readings:
            assert r.value is None or isinstance(r.value, float)


def test_json_messages_are_read_strictly_like_every_json_codec() -> None:
    """Duplicate keys, bytes that are not UTF-8 and NUL in a name: each named as such."""
    topic = {"topic": "AKLC/Node/Trap9"}
    with pytest.raises(DecodeError, match="key 'VBat' appears twice"):
        CODEC(b'{"VBat": 4.1, "VBat": 3.9}', topic, AT)
    with pytest.raises(DecodeError, match="not UTF-8") as info:
        CODEC(b'{"VBat": 4.1, "x": "\xff"}', topic, AT)
    assert info.value.malformed
    with pytest.raises(DecodeError, match="NUL"):
        CODEC(b'{"a\\u0000b": 1}', topic, AT)
