"""The Redis stream codec: a batch payload (one JSON line per entry) to one message per entry;
a line that is not an entry is refused alone and kept in quarantine."""

from __future__ import annotations

import pytest

from fieldbridge.codecs.redis_stream import (
    StreamBatchCodec,
    StreamEntryCodec,
    batch_document,
    batch_entries,
    batch_payload,
    batch_readings,
    entry_payload,
)
from fieldbridge.errors import DecodeError
from fieldbridge.model import Decoded, Refusal


def test_a_batch_becomes_one_message_per_entry() -> None:
    codec = StreamEntryCodec("uuid-1", "redis_stream")
    lines = [
        entry_payload("1621122796939-0", {"temperature_celsius": "20.3", "note": "a\nb"}),
        b'{"id": "oops"}',
        entry_payload("1621122797943-1", {"humidity_percent": "74"}),
    ]
    parts = codec(batch_payload(lines), {"stream": "measurement:values"}, 0.0)
    first, bad, second = parts
    assert isinstance(first, Decoded) and isinstance(second, Decoded)
    assert first.idempotency_key == "1621122796939-0" and first.raw == lines[0]
    assert [(r.quantity, r.value, r.measured_at) for r in first.readings] == [
        ("temperature_celsius", 20.3, 1621122796.939)
    ]
    assert second.raw == lines[2] and second.readings[0].value == 74.0
    assert isinstance(bad, Refusal) and bad.raw == lines[1]


def test_a_payload_of_no_entry_is_refused() -> None:
    codec = StreamEntryCodec("uuid-1")
    with pytest.raises(DecodeError, match="not a journalled stream entry"):
        codec(b"not json\n[1]", {}, 0.0)
    # one entry alone (an older single-entry payload) still decodes
    [one] = codec(entry_payload("5-0", {"n": "1"}), {}, 0.0)
    assert isinstance(one, Decoded) and one.idempotency_key == "5-0"


# --- journal = "batch": a message per XREAD batch -----------------------------------------


def test_a_batch_document_becomes_a_message_per_batch_with_no_readings() -> None:
    entries = [(f"1700000000{n:03d}-0", {"n": str(n), "note": "x\ny"}) for n in range(5)]
    codec = StreamBatchCodec("uuid-1", "redis_stream", per_message=2)
    parts = codec(batch_document(entries), {"stream": "s", "batch": True}, 0.0)
    assert all(isinstance(p, Decoded) and not p.readings for p in parts)
    decoded = [p for p in parts if isinstance(p, Decoded)]
    assert [d.idempotency_key for d in decoded] == [entries[1][0], entries[3][0], entries[4][0]]
    # each message keeps its own entries, as read
    assert [batch_entries(d.raw or b"") for d in decoded] == [
        entries[0:2],
        entries[2:4],
        entries[4:5],
    ]
    # one batch that fits is the payload itself
    [whole] = StreamBatchCodec("uuid-1")(batch_document(entries), {}, 0.0)
    assert isinstance(whole, Decoded) and whole.raw is None
    assert whole.idempotency_key == entries[-1][0]


def test_the_readings_of_a_batch_are_those_of_its_entries() -> None:
    entries = [("1621122796939-0", {"t": "20.3", "label": "on"}), ("1621122797943-1", {"h": "74"})]
    readings = batch_readings(batch_document(entries))
    assert [(r.quantity, r.value, r.measured_at) for r in readings] == [
        ("t", 20.3, 1621122796.939),
        ("h", 74.0, 1621122797.943),
    ]


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"not json", "not a journalled stream batch"),
        (b"[]", "non-empty JSON list"),
        (b'[["1-0", {"a": "1"}], ["2-0"]]', "items are"),
        (b'[["5-0", {}], ["2-0", {}]]', "out of order"),
        (b'[["x", {}]]', "is not <milliseconds>-<sequence>"),
    ],
)
def test_a_payload_that_is_not_a_batch_is_refused(payload: bytes, why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        StreamBatchCodec("uuid-1")(payload, {}, 0.0)
