"""Efento over CoAP: frames per second with every 2.01 sent after commit, and latency.

Measures, in one run:
  * `fieldbridge run` (subprocess, SQLite, one [[sources.efento]]): a raw-UDP load generator
    keeps many CON POST /m frames in flight (real 5-sample frames, temperature and humidity,
    from distinct sensors and timestamps) and counts 2.01 answers: frames/s and readings/s;
  * the same at a paced 1,000 frames/s: p50/p99/max answer latency;
  * the reference: a bare aiocoap server that commits one SQLite row per request, loaded by
    the same generator in the same run.

Run: .venv/bin/python bench/coap_efento.py   (about a minute on 2 cores)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import final_line, free_port, print_table
from fieldbridge.codecs.efento.proto.config_pb2 import ProtoConfig
from fieldbridge.codecs.efento.proto.measurements_pb2 import ProtoChannel, ProtoMeasurements

T0 = 1_700_000_000
SAMPLES = 5
HASH = 7
FIELDBRIDGE = str(Path(sys.executable).with_name("fieldbridge"))
ANSWER_TIMEOUT = 5.0  # seconds; an answer later than this counts as lost
MIDS_PER_SOCKET = 30_000  # below 65,536: a reused message id would be taken for a duplicate


# --- frames and CoAP, hand-encoded: a load generator must cost less than what it loads -----


def serial(sensor: int) -> bytes:
    return b"\x28\x2c" + sensor.to_bytes(4, "big")


def frame(sensor: int, n: int) -> bytes:
    start = T0 + n * SAMPLES * 60
    message = ProtoMeasurements(
        serial_number=serial(sensor),
        battery_status=True,
        measurement_period_base=60,
        measurement_period_factor=1,
        next_transmission_at=start + SAMPLES * 60,
        configuration_hash=HASH,
        signal=20,
    )
    message.channels.append(
        ProtoChannel(
            type=1, timestamp=start, start_point=200 + n % 50, sample_offsets=[0, 1, 2, 1, 0]
        )
    )
    message.channels.append(
        ProtoChannel(type=2, timestamp=start, start_point=40, sample_offsets=[0, 1, 1, 2, 3])
    )
    return message.SerializeToString()


def config_frame(sensor: int) -> bytes:
    return ProtoConfig(
        serial_number=serial(sensor), configuration_hash=HASH, measurement_period_base=60
    ).SerializeToString()


def coap_post(mid: int, token: bytes, path: bytes, payload: bytes) -> bytes:
    # ver 1, CON, token length 4 | POST | message id | token | Uri-Path | payload marker
    return (
        struct.pack(">BBH", 0x44, 0x02, mid)
        + token
        + bytes([0xB0 | len(path)])
        + path
        + b"\xff"
        + payload
    )


@dataclass
class Run:
    sent: int = 0
    answered: int = 0
    lost: int = 0
    separate: int = 0  # empty ACKs: answers that came as separate responses (late)
    cpu: float = 0.0  # CPU seconds the server used meanwhile
    codes: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def rate(self) -> float:
        return self.codes["2.01"] / self.elapsed if self.elapsed else 0.0

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000 if ordered else 0.0


class Socket(asyncio.DatagramProtocol):
    """One UDP socket of the generator: its own message ids and the requests in flight."""

    def __init__(self, generator: Generator) -> None:
        self.generator = generator
        self.transport: asyncio.DatagramTransport | None = None
        self.mid = 0
        self.inflight: dict[bytes, float] = {}  # token -> send time

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def datagram_received(self, data: bytes, addr: object) -> None:
        kind, code = data[0] >> 4 & 3, data[1]
        token = data[4 : 4 + (data[0] & 15)]
        if kind == 2 and code == 0:  # empty ACK: the answer follows separately, later
            self.generator.run.separate += 1
            return
        if kind == 0 and self.transport is not None:  # a separate answer must be ACKed
            self.transport.sendto(
                struct.pack(">BBH", 0x60, 0, struct.unpack_from(">H", data, 2)[0])
            )
        sent = self.inflight.pop(token, None)
        if sent is not None:
            self.generator.answered(f"{code >> 5}.{code & 31:02d}", time.perf_counter() - sent)

    def send(self, path: bytes, payload: bytes) -> None:
        assert self.transport is not None
        self.mid = (self.mid + 1) & 0xFFFF
        token = struct.pack(">HH", id(self) & 0xFFFF, self.mid)
        self.inflight[token] = time.perf_counter()
        self.transport.sendto(coap_post(self.mid, token, path, payload))


class Generator:
    """Keeps `window` requests in flight, or sends at a fixed rate, over fresh sockets."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.run = Run()
        self._room = asyncio.Event()
        self._inflight = 0
        self._sockets: list[Socket] = []
        self._socket: Socket | None = None

    async def _next_socket(self) -> Socket:
        if self._socket is None or self._socket.mid >= MIDS_PER_SOCKET:
            loop = asyncio.get_running_loop()
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: Socket(self), remote_addr=("127.0.0.1", self.port)
            )
            protocol.transport = transport
            self._sockets.append(protocol)
            self._socket = protocol
        return self._socket

    def answered(self, code: str, latency: float) -> None:
        self.run.answered += 1
        self.run.codes[code] += 1
        self.run.latencies.append(latency)
        self._inflight -= 1
        self._room.set()

    async def _send(self, path: bytes, payload: bytes) -> None:
        sock = await self._next_socket()
        self._inflight += 1
        self.run.sent += 1
        sock.send(path, payload)

    async def windowed(
        self, path: bytes, payloads: list[bytes], window: int, seconds: float
    ) -> Run:
        """As many as answers allow, `window` at a time, for `seconds` (or until done)."""
        self.run = Run()
        started = time.perf_counter()
        deadline = started + seconds
        for payload in payloads:
            while self._inflight >= window:
                self._room.clear()
                try:
                    await asyncio.wait_for(self._room.wait(), ANSWER_TIMEOUT)
                except TimeoutError:
                    self._expire()
            if time.perf_counter() >= deadline:
                break
            await self._send(path, payload)
        await self._drain()
        self.run.elapsed = time.perf_counter() - started
        return self.run

    async def paced(self, path: bytes, payloads: list[bytes], rate: float) -> Run:
        """Each payload at its own moment, `rate` per second, whatever the answers do."""
        self.run = Run()
        started = time.perf_counter()
        for n, payload in enumerate(payloads):
            due = started + n / rate
            delay = due - time.perf_counter()
            if delay > 0.001:
                await asyncio.sleep(delay)
            await self._send(path, payload)
        await self._drain()
        self.run.elapsed = time.perf_counter() - started
        return self.run

    async def _drain(self) -> None:
        deadline = time.perf_counter() + ANSWER_TIMEOUT
        while self._inflight and time.perf_counter() < deadline:
            self._room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), deadline - time.perf_counter())
        self._expire()

    def _expire(self) -> None:
        now = time.perf_counter()
        for sock in self._sockets:
            for token, sent in list(sock.inflight.items()):
                if now - sent >= ANSWER_TIMEOUT or self._inflight <= 0:
                    del sock.inflight[token]
                    self.run.lost += 1
                    self._inflight -= 1
        self._inflight = max(self._inflight, 0)


# --- the servers ------------------------------------------------------------------------------


def start_fieldbridge(
    workdir: Path, udp: int, http: int, flush_ms: float
) -> subprocess.Popen[bytes]:
    config = workdir / "fieldbridge.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{workdir / "fb.db"}"\n'
        f'[http]\nlisten = "127.0.0.1:{http}"\n'
        f"[ingest]\nflush_ms = {flush_ms}\n"
        '[log]\nlevel = "warning"\n'
        f'[[sources.efento]]\nname = "efento"\nlisten = "127.0.0.1:{udp}"\n'
    )
    process = subprocess.Popen(
        [FIELDBRIDGE, "--config", str(config), "run"],
        stdout=(workdir / "fieldbridge.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{http}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit(f"fieldbridge did not start:\n{(workdir / 'fieldbridge.log').read_text()}")


def start_reference(workdir: Path, udp: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, __file__, "--reference-server", str(udp), str(workdir / "ref.db")],
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    process.stdout.readline()  # "ready"
    return process


def reference_server(port: int, db: str) -> None:
    """A bare aiocoap server: one SQLite row committed per POST /m, then 2.01."""
    import aiocoap
    import aiocoap.resource as resource

    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE frames (id INTEGER PRIMARY KEY, received REAL, payload BLOB)")

    class Measurements(resource.Resource):  # type: ignore[misc]
        async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
            conn.execute(
                "INSERT INTO frames (received, payload) VALUES (?, ?)",
                (time.time(), request.payload),
            )
            return aiocoap.Message(code=aiocoap.CREATED)

    async def serve() -> None:
        site = resource.Site()
        site.add_resource(["m"], Measurements())
        await aiocoap.Context.create_server_context(
            site, bind=("127.0.0.1", port), transports=["udp6"]
        )
        print("ready", flush=True)
        await asyncio.get_running_loop().create_future()

    uvloop.run(serve())


def row(server: str, name: str, run: Run, rows_per_frame: int) -> tuple[object, ...]:
    ok = run.codes["2.01"]
    return (
        server,
        name,
        run.sent,
        ok,
        run.lost,
        run.separate,
        run.rate,
        run.rate * rows_per_frame if rows_per_frame else "",
        run.percentile(0.5),
        run.percentile(0.99),
        max(run.latencies, default=0.0) * 1000,
        run.cpu / ok * 1e6 if run.cpu and ok else "",
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process (all its threads) used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --- the run ----------------------------------------------------------------------------------


async def load(port: int, pid: int, args: argparse.Namespace, *, configs: bool) -> tuple[Run, Run]:
    sensors = args.sensors
    total = int(args.seconds * 6000) + 20_000  # more than the fastest run can send
    frames = [frame(i % sensors, i // sensors) for i in range(total)]
    generator = Generator(port)
    if configs:  # each sensor's configuration first, as sensors upload it after start-up
        await generator.windowed(b"c", [config_frame(s) for s in range(sensors)], 64, 60)
    warm = await generator.windowed(b"m", frames[:2000], args.window, 30)
    assert warm.codes["2.01"] == 2000, f"warm-up failed: {warm}"
    rest = frames[2000:]
    paced_count = int(args.rate * args.paced_seconds)
    cpu = cpu_seconds(pid)
    paced = await generator.paced(b"m", rest[:paced_count], args.rate)
    paced.cpu = cpu_seconds(pid) - cpu
    cpu = cpu_seconds(pid)
    fast = await generator.windowed(b"m", rest[paced_count:], args.window, args.seconds)
    fast.cpu = cpu_seconds(pid) - cpu
    return fast, paced


def count_readings(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the fast run")
    parser.add_argument("--window", type=int, default=64, help="requests in flight (fast run)")
    parser.add_argument("--sensors", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=1000.0, help="paced frames/s")
    parser.add_argument("--paced-seconds", type=float, default=5.0)
    parser.add_argument("--flush-ms", type=float, default=2.0, help="fieldbridge ingest.flush_ms")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument(
        "--reference-server", nargs=2, metavar=("PORT", "DB"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.reference_server:
        reference_server(int(args.reference_server[0]), args.reference_server[1])
        return

    with tempfile.TemporaryDirectory(prefix="bench-coap-") as tmp:
        workdir = Path(tmp)
        udp, http = free_port(), free_port()
        server = start_fieldbridge(workdir, udp, http, args.flush_ms)
        try:
            fast, paced = uvloop.run(load(udp, server.pid, args, configs=True))
        finally:
            stop(server)
        readings = count_readings(workdir / "fb.db")
        ref_fast = ref_paced = None
        if not args.skip_reference:
            ref_udp = free_port()
            reference = start_reference(workdir, ref_udp)
            try:
                ref_fast, ref_paced = uvloop.run(load(ref_udp, reference.pid, args, configs=False))
            finally:
                stop(reference)

    paced_name = f"paced {args.rate:g}/s"
    rows = [row("fieldbridge", "fast", fast, 2 * SAMPLES), row("fieldbridge", paced_name, paced, 0)]
    if ref_fast is not None and ref_paced is not None:
        rows += [row("reference", "fast", ref_fast, 1), row("reference", paced_name, ref_paced, 0)]
    print_table(
        f"Efento CoAP, CON POST /m, {args.window} in flight (fast), {args.sensors} sensors, "
        "5 samples x 2 channels per frame, SQLite synchronous=FULL",
        ["server", "run", "sent", "2.01", "lost", "separate", "frames/s", "rows/s", "p50 ms",
         "p99 ms", "max ms", "CPU us/frame"],
        rows,
    )  # fmt: skip
    other = {k: v for k, v in (fast.codes + paced.codes).items() if k != "2.01"}
    expected = 10 * (2000 + fast.codes["2.01"] + paced.codes["2.01"])
    print(
        f"\nfieldbridge readings stored: {readings:,} (expected {expected:,}); "
        f"other answers: {other or 'none'}"
    )
    reference = ref_fast.rate if ref_fast is not None else None
    final_line(
        "coap_efento",
        fast.rate,
        "frames/s",
        reference,
        fast.rate / reference if reference else None,
    )
    if readings != expected:
        raise SystemExit("stored readings do not match the acknowledged frames")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
