"""MQTT topic filters: validation and matching, shared by the MQTT source and the spy."""

from __future__ import annotations

import pytest

from fieldbridge.topics import check_filter, matches


@pytest.mark.parametrize(
    "topic_filter",
    ["sensors/+/data", "#", "device/sck/+/readings/raw", "$share/fb/sensors/#", "$queue/a/+"],
)
def test_valid_filters_pass(topic_filter: str) -> None:
    check_filter(topic_filter)


@pytest.mark.parametrize(
    ("topic_filter", "says"),
    [
        ("", "non-empty"),
        ("a\x00b", "without NUL"),
        ("a/#/b", "'#' must be a whole level and the last one"),
        ("a/b#", "'#' must be a whole level"),
        ("a/x+/b", "'+' must be a whole level"),
        ("$share//a", "$share/<group>/<filter>"),
        ("$share/g+/a", "$share/<group>/<filter>"),
        ("$queue/", "needs a filter"),
    ],
)
def test_invalid_filters_say_why(topic_filter: str, says: str) -> None:
    with pytest.raises(ValueError) as caught:
        check_filter(topic_filter)
    assert says in str(caught.value)


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("sensors/+/data", "sensors/dev-1/data", True),
        ("sensors/+/data", "sensors/dev-1/other", False),
        ("sensors/#", "sensors/a/b/c", True),
        ("sensors/#", "sensors", True),
        ("+/data", "a/b/data", False),
        ("#", "$SYS/broker/uptime", False),  # '#' does not take $-topics (MQTT 4.7.2)
    ],
)
def test_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert matches(topic_filter, topic) is expected
