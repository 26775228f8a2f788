"""The Redis stream codec: a batch payload (one JSON line per entry) to one message per entry;
a line that is not an entry is refused alone and kept in quarantine."""

from __future__ import annotations

import pytest

from fieldbridge.codecs.redis_stream import StreamEntryCodec, batch_payload, entry_payload
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
