"""Fuzzing the Efento codec: any bytes give decoded messages or a DecodeError, fast, never else."""

from __future__ import annotations

import contextlib
import json
import time
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fieldbridge.codecs.efento import decode, summary, to_json
from fieldbridge.codecs.efento.proto.measurements_pb2 import ProtoChannel, ProtoMeasurements
from fieldbridge.errors import DecodeError
from fieldbridge.model import Decoded
from tests.support import paths

FIXTURES = paths.FIXTURES / "efento"
VECTORS: list[dict[str, Any]] = json.loads((FIXTURES / "vectors.json").read_text())
SEED: list[dict[str, Any]] = json.loads((FIXTURES / "seed_frames.json").read_text())["frames"]
VALID = [(v["endpoint"].strip("/"), bytes.fromhex(v["hex"])) for v in VECTORS] + [
    (f["endpoint"], bytes.fromhex(f["hex"])) for f in SEED
]
ENDPOINTS = st.sampled_from(["m", "i", "c"])
# Seconds per input for all three entry points together: a guard against hangs, generous so a
# busy machine does not fail it (the worst frames take about 0.5 s; bench/efento_fuzz.py
# measures the real maximum).
TIME_BOUND = 5.0
FUZZ = settings(
    max_examples=250,
    deadline=timedelta(seconds=2 * TIME_BOUND),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)


def exercise(endpoint: str, payload: bytes) -> list[Decoded] | None:
    """Run every entry point; only results or DecodeError may come out, within the bound."""
    started = time.perf_counter()
    out: list[Decoded] | None = None
    try:
        out = decode(payload, {"endpoint": endpoint}, 1_700_000_000.0)
    except DecodeError as exc:
        assert exc.reason
    for call in (lambda: to_json(endpoint, payload), lambda: summary(endpoint, payload)):
        with contextlib.suppress(DecodeError):
            call()
    assert time.perf_counter() - started < TIME_BOUND
    if out is not None:
        assert len(out) == 1 and out[0].device
    return out


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


@FUZZ
@given(endpoint=ENDPOINTS, payload=st.binary(max_size=600))
def test_random_bytes(endpoint: str, payload: bytes) -> None:
    exercise(endpoint, payload)


@FUZZ
@given(frame=st.sampled_from(VALID), data=st.data())
def test_truncated_valid_frames(frame: tuple[str, bytes], data: st.DataObject) -> None:
    endpoint, payload = frame
    cut = data.draw(st.integers(0, len(payload) - 1))
    exercise(endpoint, payload[:cut])


@FUZZ
@given(frame=st.sampled_from(VALID), data=st.data())
def test_bit_flipped_valid_frames(frame: tuple[str, bytes], data: st.DataObject) -> None:
    endpoint, payload = frame
    mutated = bytearray(payload)
    for _ in range(data.draw(st.integers(1, 8))):
        bit = data.draw(st.integers(0, len(mutated) * 8 - 1))
        mutated[bit // 8] ^= 1 << (bit % 8)
    exercise(endpoint, bytes(mutated))


EXTREMES = st.sampled_from([0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63, 2**64 - 1])


@st.composite
def hostile_field(draw: st.DrawFn) -> bytes:
    """A field with an extreme number, value, length or nesting."""
    number = draw(st.one_of(st.integers(1, 70), st.sampled_from([2**29 - 1, 0])))
    kind = draw(st.sampled_from(["varint", "overlong", "length", "huge-length", "nest", "fixed"]))
    if kind == "varint":
        return varint(number << 3) + varint(draw(EXTREMES))
    if kind == "overlong":  # more than 10 varint bytes
        return varint(number << 3) + b"\xff" * draw(st.integers(10, 40)) + b"\x01"
    if kind == "length":
        body = draw(st.binary(max_size=64))
        return varint(number << 3 | 2) + varint(len(body)) + body
    if kind == "huge-length":
        return varint(number << 3 | 2) + varint(draw(EXTREMES)) + b"\x00" * 8
    if kind == "nest":  # groups or messages nested far deeper than any Efento message
        depth = draw(st.sampled_from([50, 101, 1000, 20000]))
        if draw(st.booleans()):
            return varint(number << 3 | 3) * depth + varint(number << 3 | 4) * depth
        inner = b""
        for _ in range(min(depth, 2000)):
            inner = varint(4 << 3 | 2) + varint(len(inner)) + inner
        return inner
    return varint(number << 3 | draw(st.sampled_from([1, 5, 6, 7]))) + b"\xff" * 8


@FUZZ
@given(
    endpoint=ENDPOINTS,
    frame=st.sampled_from(VALID),
    fields=st.lists(hostile_field(), min_size=1, max_size=4),
    at_end=st.booleans(),
)
def test_extreme_varints_lengths_and_nesting(
    endpoint: str, frame: tuple[str, bytes], fields: list[bytes], at_end: bool
) -> None:
    hostile = b"".join(fields)
    exercise(endpoint, frame[1] + hostile if at_end else hostile + frame[1])


SINT32 = st.integers(-(2**31), 2**31 - 1)
UINT32 = st.one_of(st.integers(0, 2**32 - 1), st.integers(0, 3600))


@st.composite
def measurement_frames(draw: st.DrawFn) -> bytes:
    """Well-formed ProtoMeasurements with any field values, extreme ones included."""
    channels = [
        ProtoChannel(
            type=draw(st.integers(0, 50)),  # type: ignore[arg-type]
            timestamp=draw(st.one_of(SINT32, st.integers(1_600_000_000, 1_800_000_000))),
            start_point=draw(st.one_of(SINT32, st.integers(-1000, 1000))),
            sample_offsets=draw(
                st.lists(
                    st.one_of(SINT32, st.integers(-5000, 5000), st.integers(8355830, 8388617)),
                    max_size=20,
                )
            ),
        )
        for _ in range(draw(st.integers(0, 7)))
    ]
    message = ProtoMeasurements(
        serial_number=draw(st.binary(max_size=20)),
        battery_status=draw(st.booleans()),
        measurement_period_base=draw(UINT32),
        measurement_period_factor=draw(UINT32),
        channels=channels,
        signal=draw(UINT32),
    )
    return message.SerializeToString()


@FUZZ
@given(payload=measurement_frames())
def test_well_formed_measurements_with_any_values(payload: bytes) -> None:
    out = exercise("m", payload)
    if out is None:
        return
    readings = out[0].readings
    # Every reading is keyed by channel and second, once; the JSON holds the same samples.
    assert len({r.key for r in readings}) == len(readings)
    rows = to_json("m", payload)["measurements"]
    assert sum(len(row["params"]) for row in rows) == len(readings)
    assert all(r.measured_at >= 0 for r in readings)
