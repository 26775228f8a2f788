"""Split /c uploads in memory (codecs/efento/splits.py): bounded in parts, bytes and age, with
the clock passed in."""

from __future__ import annotations

from fieldbridge.codecs.efento import Missing, Part, Refused, SplitUploads, Whole, summary
from fieldbridge.codecs.efento.proto.config_pb2 import ProtoConfig
from fieldbridge.codecs.efento.splits import Step

SERIAL = bytes.fromhex("282C00000101")


def part(split: int, size: int = 0, serial: bytes = SERIAL, period: int = 60) -> bytes:
    """A /c part of about `size` bytes (the padding is a long cloud token)."""
    config = ProtoConfig(serial_number=serial, payload_split_info=split)
    config.measurement_period_base = period
    if size:
        config.cloud_token = "x" * size
    return config.SerializeToString()


def add(uploads: SplitUploads, payload: bytes, now: float = 1.0) -> Step:
    return uploads.add(summary("c", payload), payload, now)


def test_a_part_beyond_max_parts_is_refused_and_drops_the_upload() -> None:
    uploads = SplitUploads(300, max_parts=3)
    assert [add(uploads, part(-k)) for k in (1, 2, 3)] == [Part(1), Part(2), Part(3)]
    refused = add(uploads, part(-4))
    assert isinstance(refused, Refused) and refused.limit == "max_parts"
    assert "part 4; at most 3 parts" in refused.reason
    assert (uploads.held_uploads, uploads.held_bytes) == (1, 0)  # only the refusal is kept
    # The rest of the refused upload is refused too, its last part ending it.
    later = add(uploads, part(-5))
    assert isinstance(later, Refused) and "refused before" in later.reason
    last = add(uploads, part(6))
    assert isinstance(last, Refused) and last.limit == "max_parts"
    assert uploads.held_uploads == 0
    # A last part announcing more parts than allowed is refused on its own.
    assert isinstance(add(uploads, part(4)), Refused)
    # Part 1 starts a new upload, which completes.
    one, two, three = part(-1), part(-2), part(3)
    assert [add(uploads, p) for p in (one, two)] == [Part(1), Part(2)]
    whole = add(uploads, three)
    assert isinstance(whole, Whole) and whole.payload == one + two + three


def test_a_part_over_max_upload_bytes_is_refused() -> None:
    uploads = SplitUploads(300, max_upload_bytes=2000)
    assert add(uploads, part(-1, 900)) == Part(1)
    assert add(uploads, part(-2, 900)) == Part(2)
    assert uploads.held_bytes > 1800
    refused = add(uploads, part(-3, 900))
    assert isinstance(refused, Refused) and refused.limit == "max_upload_bytes"
    assert "at most 2000" in refused.reason
    assert uploads.held_bytes == 0
    # A last part that makes the whole too large is refused too.
    assert add(uploads, part(-1, 900)) == Part(1)
    last = add(uploads, part(2, 1200))
    assert isinstance(last, Refused) and last.limit == "max_upload_bytes"
    assert (uploads.held_uploads, uploads.held_bytes) == (0, 0)


def test_the_same_part_again_replaces_it() -> None:
    uploads = SplitUploads(300, max_upload_bytes=2000)
    for _ in range(5):  # a sensor retrying part 2 as new messages
        assert add(uploads, part(-2, 900)) == Part(2)
    assert 900 < uploads.held_bytes < 1000


def test_all_uploads_together_are_bound_by_max_bytes() -> None:
    uploads = SplitUploads(300, max_upload_bytes=2000, max_bytes=3500)
    serials = [bytes.fromhex(f"282C0000010{n}") for n in range(4)]
    for serial in serials[:3]:
        assert add(uploads, part(-1, 1000, serial)) == Part(1)
    refused = add(uploads, part(-1, 1000, serials[3]))
    assert isinstance(refused, Refused) and refused.limit == "max_bytes"
    assert uploads.held_bytes < 3500
    # One upload finishing makes room.
    assert isinstance(add(uploads, part(2, 0, serials[0])), Whole)
    assert add(uploads, part(-1, 1000, serials[3])) == Part(1)


def test_many_large_parts_from_one_sensor_stay_bounded() -> None:
    """The attack of issue 10: one serial sending 3,000 parts of 60 KB."""
    uploads = SplitUploads(300)
    answers = [add(uploads, part(-k, 60_000), float(k)) for k in range(1, 3001)]
    assert sum(isinstance(a, Part) for a in answers) == 4  # 4 parts of 60 KB fit in 256 KiB
    assert all(isinstance(a, Refused) for a in answers[4:])
    assert uploads.held_bytes == 0


def test_uploads_expire_by_age_with_the_clock_passed_in() -> None:
    uploads = SplitUploads(10)
    other = bytes.fromhex("282C00000202")
    add(uploads, part(-1, 100), 0.0)
    add(uploads, part(-1, 100, other), 5.0)
    add(uploads, part(-2, 100), 9.0)  # a later part does not make the upload younger
    assert uploads.expire(10.0) == 0
    assert uploads.expire(10.5) == 1
    assert uploads.held_uploads == 1
    assert uploads.expire(15.5) == 1
    assert (uploads.held_uploads, uploads.held_bytes) == (0, 0)
    # The expired upload's last part finds nothing in memory.
    step = add(uploads, part(3), 16.0)
    assert isinstance(step, Missing) and dict(step.held) == {}


def test_parts_found_elsewhere_count_towards_max_upload_bytes() -> None:
    uploads = SplitUploads(300, max_upload_bytes=2000)
    step = add(uploads, part(3, 100))
    assert isinstance(step, Missing)
    refused = uploads.complete(step, {1: part(-1, 900), 2: part(-2, 1000)})
    assert isinstance(refused, Refused) and refused.limit == "max_upload_bytes"
    whole = uploads.complete(step, {1: part(-1), 2: part(-2)})
    assert isinstance(whole, Whole) and whole.parts == 3
