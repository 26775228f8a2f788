"""Efento codec fuzz run: a million mutated frames give results or DecodeError, never else.

Inputs are mutations of the spec's vectors, the seed frames and hand-built frames (truncation,
bit flips, byte edits, splices, hostile fields with extreme varints, huge lengths and deep
nesting), random bytes, and well-formed frames with random values. Every input goes through
decode(), to_json() and summary() of its endpoint (sometimes a wrong one). Counts results,
DecodeErrors and other exceptions (must be 0) and the slowest input. Also measures the codec's
speed on the 5-sample /m vector.

Run: .venv/bin/python bench/efento_fuzz.py   (about 2-3 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import final_line, print_table
from fieldbridge.codecs.efento import decode, summary, to_json
from fieldbridge.codecs.efento.proto.config_pb2 import ProtoConfig
from fieldbridge.codecs.efento.proto.measurements_pb2 import ProtoChannel, ProtoMeasurements
from fieldbridge.errors import DecodeError

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "efento"
ENDPOINTS = ("m", "i", "c")
EXTREMES = (0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63, 2**64 - 1)
T = 1_717_243_200


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def corpus() -> list[tuple[str, bytes]]:
    vectors = json.loads((FIXTURES / "vectors.json").read_text())
    seed = json.loads((FIXTURES / "seed_frames.json").read_text())["frames"]
    frames = [(v["endpoint"].strip("/"), bytes.fromhex(v["hex"])) for v in vectors]
    frames += [(f["endpoint"], bytes.fromhex(f["hex"])) for f in seed]
    # Hand-built: every type, error codes, metadata, off-grid binary changes, a split /c.
    for kind in range(44):
        offsets = [1, -91, 131, 241] if kind in (5, 7, 42) else [0, 3, 8355840, -2]
        frames.append(("m", measurements(random.Random(kind), kind, offsets)))
    parts = [
        ProtoConfig(serial_number=b"(,\x02A\xa0\x01", payload_split_info=split).SerializeToString()
        for split in (-1, 2)
    ]
    frames += [("c", parts[0]), ("c", parts[0] + parts[1])]
    return frames


def measurements(rng: random.Random, kind: int, offsets: list[int]) -> bytes:
    message = ProtoMeasurements(
        serial_number=rng.randbytes(6),
        battery_status=True,
        measurement_period_base=60,
        measurement_period_factor=rng.choice((0, 1, 5)),
        signal=20,
        configuration_hash=rng.randrange(1000),
    )
    message.channels.append(
        ProtoChannel(type=kind, timestamp=T, start_point=rng.randrange(-500, 500))  # type: ignore[arg-type]
    )
    message.channels[0].sample_offsets.extend(offsets)
    return message.SerializeToString()


def random_frame(rng: random.Random) -> bytes:
    """A well-formed ProtoMeasurements with values anywhere in their wire ranges."""
    message = ProtoMeasurements(
        serial_number=rng.randbytes(rng.choice((0, 6, 6, 6, 17))),
        measurement_period_base=rng.choice((0, 1, 20, 60, 65535, 2**32 - 1)),
        measurement_period_factor=rng.choice((0, 1, 5, 65535, 2**32 - 1)),
        battery_status=rng.random() < 0.5,
    )
    for _ in range(rng.randrange(8)):
        channel = message.channels.add()
        channel.type = rng.randrange(50)  # type: ignore[assignment]
        channel.timestamp = rng.choice((T, 0, -1, 2**31 - 1, -(2**31)))
        channel.start_point = rng.choice((0, 215, -(2**31), 2**31 - 1))
        channel.sample_offsets.extend(
            rng.choice((rng.randrange(-5000, 5000), rng.randrange(8355830, 8388620), 2**31 - 1))
            for _ in range(rng.randrange(12))
        )
    return message.SerializeToString()


def hostile_field(rng: random.Random) -> bytes:
    number = rng.choice((rng.randrange(1, 70), 2**29 - 1))
    kind = rng.randrange(6)
    if kind == 0:
        return varint(number << 3) + varint(rng.choice(EXTREMES))
    if kind == 1:  # a varint longer than 10 bytes
        return varint(number << 3) + b"\xff" * rng.randrange(10, 40) + b"\x01"
    if kind == 2:
        return varint(number << 3 | 2) + varint(rng.choice(EXTREMES)) + b"\x00" * 8
    if kind == 3:
        depth = rng.choice((50, 101, 1000, 20000))
        return varint(number << 3 | 3) * depth + varint(number << 3 | 4) * depth
    if kind == 4:
        inner = b""
        for _ in range(rng.choice((10, 100, 1000))):
            inner = varint(4 << 3 | 2) + varint(len(inner)) + inner
        return inner
    return varint(number << 3 | rng.choice((1, 5, 6, 7))) + rng.randbytes(8)


def mutators(frames: list[tuple[str, bytes]]) -> dict[str, Callable[[random.Random], bytes]]:
    def pick(rng: random.Random) -> bytes:
        return rng.choice(frames)[1]

    def truncate(rng: random.Random) -> bytes:
        data = pick(rng)
        return data[: rng.randrange(len(data))]

    def flip(rng: random.Random) -> bytes:
        data = bytearray(pick(rng))
        for _ in range(rng.randrange(1, 9)):
            bit = rng.randrange(len(data) * 8)
            data[bit // 8] ^= 1 << (bit % 8)
        return bytes(data)

    def edit(rng: random.Random) -> bytes:
        data = bytearray(pick(rng))
        for _ in range(rng.randrange(1, 5)):
            at = rng.randrange(len(data) + 1)
            choice = rng.randrange(3)
            if choice == 0:
                data[at:at] = rng.randbytes(rng.randrange(1, 6))
            elif choice == 1:
                del data[at : at + rng.randrange(1, 6)]
            elif at < len(data):
                data[at] = rng.choice((0, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        return bytes(data)

    def splice(rng: random.Random) -> bytes:
        a, b = pick(rng), pick(rng)
        return a[: rng.randrange(len(a) + 1)] + b[rng.randrange(len(b) + 1) :]

    def hostile(rng: random.Random) -> bytes:
        fields = b"".join(hostile_field(rng) for _ in range(rng.randrange(1, 4)))
        data = pick(rng)
        return data + fields if rng.random() < 0.5 else fields + data

    return {
        "random bytes": lambda rng: rng.randbytes(rng.randrange(300)),
        "truncated": truncate,
        "bit flips": flip,
        "byte edits": edit,
        "spliced": splice,
        "hostile fields": hostile,
        "random values": random_frame,
        "valid": pick,
    }


def run_one(endpoint: str, data: bytes) -> list[tuple[str, str]]:
    """Each entry point on one input: ('result' | 'DecodeError' | 'other exception', detail)."""
    calls: tuple[Callable[[], object], ...] = (
        lambda: decode(data, {"endpoint": endpoint}, 1_700_000_000.0),
        lambda: to_json(endpoint, data),
        lambda: summary(endpoint, data),
    )
    results = []
    for call in calls:
        try:
            call()
        except DecodeError:
            results.append(("DecodeError", ""))
        except Exception:
            results.append(("other exception", traceback.format_exc()))
        else:
            results.append(("result", ""))
    return results


def fuzz(inputs: int, seed: int) -> int:
    rng = random.Random(seed)
    frames = corpus()
    endpoints = {data: endpoint for endpoint, data in frames}
    kinds = mutators(frames)
    names = list(kinds)
    per_kind: Counter[str] = Counter()
    outcome: Counter[str] = Counter()
    failures: list[str] = []
    slowest, slowest_input = 0.0, b""
    started = time.perf_counter()
    for n in range(inputs):
        name = names[n % len(names)]
        data = kinds[name](rng)
        endpoint = endpoints.get(data, "m") if name == "valid" else rng.choice(ENDPOINTS)
        per_kind[name] += 1
        t0 = time.perf_counter()
        for result, detail in run_one(endpoint, data):
            outcome[result] += 1
            if detail and len(failures) < 5:
                failures.append(f"/{endpoint} {data.hex()}\n{detail}")
        spent = time.perf_counter() - t0
        if spent > slowest:
            slowest, slowest_input = spent, data
        if n and n % 200_000 == 0:
            print(f"  {n:,} inputs, {n / (time.perf_counter() - started):,.0f}/s", flush=True)
    elapsed = time.perf_counter() - started
    rate = inputs / elapsed
    print_table(
        "inputs by mutator",
        ["mutator", "inputs"],
        [(name, per_kind[name]) for name in names],
    )
    print_table(
        f"fuzz run: {inputs:,} inputs x 3 entry points (decode, to_json, summary), seed {seed}",
        ["figure", "value"],
        [
            ("inputs", inputs),
            ("calls", sum(outcome.values())),
            ("results", outcome["result"]),
            ("DecodeError", outcome["DecodeError"]),
            ("other exceptions", outcome["other exception"]),
            ("seconds", elapsed),
            ("inputs/s", rate),
            ("mean µs per input", elapsed / inputs * 1e6),
            ("max ms per input", slowest * 1000),
        ],
    )
    print(f"  slowest input ({len(slowest_input)} bytes): {slowest_input[:48].hex()}...")
    for failure in failures:
        print(failure, file=sys.stderr)
    speed()
    final_line("efento_fuzz", rate, "inputs/s", None, None)
    return 1 if outcome["other exception"] else 0


def per_call_us(call: Callable[[], object], number: int = 20_000) -> float:
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(number):
            call()
        best = min(best, (time.perf_counter() - t0) / number)
    return best * 1e6


def speed() -> None:
    vectors = {
        v["name"]: bytes.fromhex(v["hex"])
        for v in json.loads((FIXTURES / "vectors.json").read_text())
    }
    seed = {
        f["endpoint"]: bytes.fromhex(f["hex"])
        for f in json.loads((FIXTURES / "seed_frames.json").read_text())["frames"]
    }
    five = vectors["m_temp_hum_5_samples"]
    meta_m, meta_i, meta_c = {"endpoint": "m"}, {"endpoint": "i"}, {"endpoint": "c"}
    print_table(
        "codec speed (best of 3, one core)",
        ["call", "frame", "µs/frame"],
        [
            ("decode", "/m 2 channels x 5 samples", per_call_us(lambda: decode(five, meta_m, 0.0))),
            ("summary", "/m 2 channels x 5 samples", per_call_us(lambda: summary("m", five))),
            ("to_json", "/m 2 channels x 5 samples", per_call_us(lambda: to_json("m", five))),
            (
                "decode",
                "/m seed, 25 binary rows",
                per_call_us(lambda: decode(seed["m"], meta_m, 0.0)),
            ),
            ("decode", "/i seed", per_call_us(lambda: decode(seed["i"], meta_i, 0.0), 5000)),
            ("decode", "/c seed", per_call_us(lambda: decode(seed["c"], meta_c, 0.0), 5000)),
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--inputs", type=int, default=1_000_000, help="how many inputs")
    parser.add_argument("--seed", type=int, default=1, help="random seed (runs are repeatable)")
    args = parser.parse_args()
    raise SystemExit(fuzz(args.inputs, args.seed))


if __name__ == "__main__":
    main()
