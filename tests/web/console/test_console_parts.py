"""The console's pure parts: chart data, how bytes and times are shown, the Efento form."""

from __future__ import annotations

import pytest
from starlette.datastructures import FormData

from fieldbridge.store.activity import IngestBucket, Point
from fieldbridge.web.console.charts import quantity_chart, rate_chart
from fieldbridge.web.console.efento_form import form_fields
from fieldbridge.web.console.templating import ago, as_text, battery, device_url, hexdump

T0 = 1_800_000_000.0  # a multiple of 60


def test_rate_chart_has_every_bucket_and_one_series_per_source() -> None:
    buckets = [IngestBucket("mqtt", T0, 3), IngestBucket("coap", T0 + 120, 1)]
    chart = rate_chart(buckets, T0 + 10, T0 + 130, 60)
    assert chart["x"] == [T0, T0 + 60, T0 + 120]
    assert chart["series"] == [
        {"label": "coap", "values": [0.0, 0.0, 1.0]},
        {"label": "mqtt", "values": [3.0, 0.0, 0.0]},
    ]
    assert chart["y_label"] == "messages per 1 min"


def test_quantity_chart_splits_channels_and_keeps_gaps() -> None:
    points = [Point(T0, 1.0, 0, "C"), Point(T0, 2.0, 1, "C"), Point(T0 + 60, None, 0, "C")]
    chart = quantity_chart("t", points)
    assert chart["x"] == [T0, T0 + 60]
    assert chart["series"] == [
        {"label": "t ch0", "values": [1.0, None]},
        {"label": "t ch1", "values": [2.0, None]},
    ]
    assert (chart["y_label"], chart["points"]) == ("t (C)", 3)
    assert quantity_chart("h", [Point(T0, 5.0, 0, None)])["series"][0]["label"] == "h"


def test_bytes_as_hex_and_text() -> None:
    assert hexdump(bytes(range(18))) == ("00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f\n10 11")
    assert hexdump(b"x" * 20, limit=16).endswith("... 4 more bytes")
    assert as_text(b'{"a": 1}\n') == '{"a": 1}\n'
    assert as_text(b"\x1b[31mred") == "\\x1b[31mred"  # an escape shows, never acts
    assert as_text(b"\xff\xfe") is None


def test_times_batteries_and_links() -> None:
    assert ago(T0 - 90, now=T0) == "2 min ago"
    assert ago(T0 - 5, now=T0) == "5 s ago"
    assert ago(None) == "never"
    assert battery({"battery": 3.7}) == "3.7 V"
    assert battery({"battery": "low"}) == "low"
    assert battery({}) == ""
    assert device_url("a/b c") == "/devices/a%2Fb%20c"


def test_efento_form_fields() -> None:
    form = FormData(
        [
            ("transmission_interval", "900"),
            ("measurement_period_base", ""),
            ("request_configuration", "1"),
            ("other", "ack_interval=3600\n\napn=internet\nrules=[]"),
        ]
    )
    assert form_fields(form) == {
        "transmission_interval": 900,
        "configuration_request": True,
        "ack_interval": 3600,
        "apn": "internet",
        "rules": [],
    }
    with pytest.raises(ValueError, match="not a whole number"):
        form_fields(FormData([("transmission_interval", "15 min")]))
    with pytest.raises(ValueError, match="write NAME=VALUE"):
        form_fields(FormData([("other", "ack_interval")]))
    with pytest.raises(ValueError, match="given twice"):
        form_fields(
            FormData([("transmission_interval", "60"), ("other", "transmission_interval=1")])
        )
    with pytest.raises(ValueError, match="nothing to send"):
        form_fields(FormData([]))
