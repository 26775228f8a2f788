"""Memory under hostile load: each attack's peak RSS beside the idle RSS of the same process.

Runs each attack against its own `fieldbridge run` subprocess (SQLite, loopback only), so one
attack's peak cannot hide another's:
  (a) Efento split /c uploads: one serial sends 3,000 parts of 60 KB over CoAP (raw UDP, CON,
      one at a time) and never the last part; the answer codes it got are counted;
  (b) the spy: two watchers open GET /api/v1/spy and never read, while 120 bodies of 650 KB
      are posted one after another;
  (c) HTTP ingest: 16 concurrent 1 MB bodies, 2 rounds, while a one-reading POST is timed
      every 0.25 s.

Idle is VmRSS after start-up and one small POST; peak is VmHWM (the kernel's high-water mark
of the process) at the end of the attack; after is VmRSS 3 s after it. The closing line's
value is the worst peak (MB), its reference that process's idle RSS (MB), and the ratio
peak / idle: how many times its resting size a process can be pushed by someone who can reach
its ports.

Run: .venv/bin/python bench/limits.py   (about 8 minutes on 2 cores; --only http for one)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import final_line, free_port, print_table
from fieldbridge.codecs.efento.proto.config_pb2 import ProtoConfig, ProtoRule

FIELDBRIDGE = str(Path(sys.executable).with_name("fieldbridge"))
MB = 1024 * 1024
SETTLE_S = 3.0  # seconds between the end of an attack and the "after" reading
COAP_ANSWER_S = 5.0  # a CoAP answer later than this counts as none


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def status_mb(pid: int, key: str) -> float:
    """VmRSS or VmHWM of a process, in MB, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{key} not in /proc/{pid}/status")


@dataclass
class Result:
    attack: str
    idle: float = 0.0
    peak: float = 0.0
    after: float = 0.0
    answers: Counter[str] = field(default_factory=Counter)
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.peak / self.idle if self.idle else 0.0


class Service:
    """`fieldbridge run` on a fresh SQLite file, HTTP and one Efento CoAP source."""

    def __init__(self, work: Path) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.coap_port = free_udp_port()
        config = work / "fieldbridge.toml"
        config.write_text(
            f'[store]\nurl = "sqlite:///{work / "fieldbridge.db"}"\n'
            f'[http]\nlisten = "127.0.0.1:{self.port}"\n'
            '[log]\nlevel = "warning"\n'
            f'[[sources.efento]]\nname = "efento"\nlisten = "127.0.0.1:{self.coap_port}"\n'
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("FIELDBRIDGE_")}
        self._log = (work / "fieldbridge.log").open("ab")
        self.proc = subprocess.Popen(
            [FIELDBRIDGE, "--config", str(config), "run"],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.base = f"http://127.0.0.1:{self.port}"

    def ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fieldbridge exited with {self.proc.returncode}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.base}/healthz", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError("fieldbridge did not answer /healthz within 30 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def readings_body(device: str, size: int) -> bytes:
    """One message whose readings fill about `size` bytes: the largest thing the HTTP JSON
    codec takes, as an attacker would send."""
    count = size // 16
    readings = {f"q{i:07d}": (i % 1000) / 10 for i in range(count)}
    return orjson.dumps({"device": device, "readings": readings})


# --- (a) Efento split /c uploads -------------------------------------------------------------


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


def config_part(part: int, size: int) -> bytes:
    """Part `part` of a split /c upload (split info -part: more parts follow), about `size`
    bytes of rules."""
    config = ProtoConfig(
        serial_number=b"\x28\x2c\x00\x00\x0a\x01", configuration_hash=9, payload_split_info=-part
    )
    for _ in range(size // 5):  # 5 bytes a rule
        config.rules.append(ProtoRule(condition=1))
    return config.SerializeToString()


async def split_uploads(service: Service, parts: int, size: int) -> Result:
    result = Result(f"(a) Efento split /c: {parts:,} parts of {size // 1000} KB")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", service.coap_port))
        sock.settimeout(COAP_ANSWER_S)
        for part in range(1, parts + 1):
            mid = part & 0xFFFF
            token = struct.pack(">I", part)
            sock.send(coap_post(mid, token, b"c", config_part(part, size)))
            result.answers[await asyncio.to_thread(_coap_answer, sock, token)] += 1
    return result


def _coap_answer(sock: socket.socket, token: bytes) -> str:
    deadline = time.monotonic() + COAP_ANSWER_S
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        kind, code = data[0] >> 4 & 3, data[1]
        if kind == 2 and code == 0:
            continue  # empty ACK: the answer follows separately
        if kind == 0:  # a separate answer must be ACKed
            sock.send(struct.pack(">BBH", 0x60, 0, struct.unpack_from(">H", data, 2)[0]))
        if data[4 : 4 + (data[0] & 15)] == token:
            return f"{code >> 5}.{code & 31:02d}"
    return "none"


# --- (b) the spy ---------------------------------------------------------------------------


def idle_watcher(service: Service) -> socket.socket:
    """A spy that connects and never reads (a small receive buffer, so the server's send
    buffer is what fills)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", service.port))
    sock.sendall(b"GET /api/v1/spy HTTP/1.1\r\nHost: bench\r\n\r\n")
    return sock


async def spy_attack(service: Service, posts: int, size: int) -> Result:
    result = Result(f"(b) spy: 2 idle watchers, {posts} posts of {size // 1000} KB")
    watchers = [idle_watcher(service), idle_watcher(service)]
    try:
        await asyncio.sleep(0.5)  # load pacing: let both streams register before posting
        async with httpx.AsyncClient(timeout=60.0) as client:
            for n in range(posts):
                body = readings_body(f"spy-{n}", size)
                answer = await client.post(
                    f"{service.base}/api/v1/ingest",
                    content=body,
                    headers={"Content-Type": "application/json"},
                )
                result.answers[str(answer.status_code)] += 1
            metrics = (await client.get(f"{service.base}/metrics")).text
        dropped = [
            line
            for line in metrics.splitlines()
            if line.startswith("fieldbridge_spy_dropped_lines_total ")
        ]
        result.note = f"spy lines dropped {dropped[0].split()[-1]}" if dropped else ""
    finally:
        for sock in watchers:
            sock.close()
    return result


# --- (c) concurrent large HTTP bodies --------------------------------------------------------


async def http_attack(service: Service, concurrent: int, rounds: int, size: int) -> Result:
    result = Result(f"(c) HTTP: {concurrent} concurrent bodies of {size // 1000} KB, {rounds}x")
    bodies = [readings_body(f"big-{n}", size) for n in range(concurrent)]
    latencies: list[float] = []
    done = asyncio.Event()
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(
        timeout=120.0, limits=httpx.Limits(max_connections=concurrent + 2)
    ) as client:

        async def big(body: bytes) -> None:
            answer = await client.post(
                f"{service.base}/api/v1/ingest", content=body, headers=headers
            )
            result.answers[str(answer.status_code)] += 1

        async def small() -> None:
            n = 0
            async with httpx.AsyncClient(timeout=60.0) as own:
                while not done.is_set():
                    n += 1
                    started = time.perf_counter()
                    await own.post(
                        f"{service.base}/api/v1/ingest",
                        json={"device": "small", "readings": {"t": n}},
                    )
                    latencies.append(time.perf_counter() - started)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(done.wait(), 0.25)

        timer = asyncio.create_task(small())
        for _ in range(rounds):
            await asyncio.gather(*(big(body) for body in bodies))
        done.set()
        await timer
    if latencies:
        result.note = f"one-reading POST: max {max(latencies):.2f} s over {len(latencies)}"
    return result


async def measure(work: Path, attack: Callable[[Service], Awaitable[Result]], name: str) -> Result:
    service = Service(work / name)
    try:
        service.ready()
        async with httpx.AsyncClient() as client:
            warm = {"device": "warm", "readings": {"t": 1}}
            (await client.post(f"{service.base}/api/v1/ingest", json=warm)).raise_for_status()
        await asyncio.sleep(1.0)  # load pacing: let start-up settle before the idle reading
        idle = status_mb(service.proc.pid, "VmRSS")
        result = await attack(service)
        result.idle = idle
        result.peak = status_mb(service.proc.pid, "VmHWM")
        await asyncio.sleep(SETTLE_S)  # a window: what memory returns once the attack ends
        result.after = status_mb(service.proc.pid, "VmRSS")
    finally:
        service.stop()
    return result


async def run(args: argparse.Namespace) -> list[Result]:
    attacks: dict[str, Callable[[Service], Awaitable[Result]]] = {
        "split": lambda s: split_uploads(s, args.parts, 60_000),
        "spy": lambda s: spy_attack(s, args.posts, 650_000),
        "http": lambda s: http_attack(s, 16, args.rounds, 1_000_000),
    }
    with tempfile.TemporaryDirectory() as tmp:
        return [
            await measure(Path(tmp), attack, name)
            for name, attack in attacks.items()
            if not args.only or name in args.only
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=int, default=3000, help="split /c parts in (a)")
    parser.add_argument("--posts", type=int, default=120, help="650 KB posts in (b)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of 16 bodies in (c)")
    parser.add_argument(
        "--only", action="append", choices=("split", "spy", "http"), help="run only this attack"
    )
    args = parser.parse_args()
    results = asyncio.run(run(args))
    print_table(
        "Memory under attack (MB; one fresh `fieldbridge run` per attack)",
        ["attack", "idle", "peak", "after", "peak/idle", "answers", "note"],
        [
            [
                r.attack,
                r.idle,
                r.peak,
                r.after,
                f"{r.ratio:.2f}",
                " ".join(f"{code}x{n}" for code, n in sorted(r.answers.items())),
                r.note,
            ]
            for r in results
        ],
    )
    worst = max(results, key=lambda r: r.ratio)
    final_line("limits", worst.peak, "MB", worst.idle, worst.ratio)


if __name__ == "__main__":
    main()
