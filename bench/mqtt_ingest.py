"""MQTT ingest throughput: QoS 1 messages stored per second, each PUBACKed only after commit.

Measures, in one run, against a Mosquitto of its own on a free loopback port:
  * the ceiling: a bare subscriber with the same client code as fieldbridge (paho on the
    asyncio loop, PUBACKs batched per loop turn) that does nothing but acknowledge;
  * fieldbridge (`fieldbridge run` subprocess, SQLite, synchronous=FULL) subscribed at QoS 1,
    a steady stream from a fast publisher: stored msg/s, ratio to the ceiling, losses;
  * a 50,000-message burst: stored, lost and duplicated readings.

Payloads are Smart Citizen readings (`device/sck/<token>/readings`, about 100 bytes, a unique
recorded_at per message); with no "smartcitizen" codec registered, generic JSON of the same
size through "http-json".

Run: .venv/bin/python bench/mqtt_ingest.py   (about 1-2 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import final_line, free_port, print_table
from fieldbridge.codecs import CODECS
from fieldbridge.sources.mqtt.broker import find_mosquitto

HERE = Path(__file__).resolve()
FIELDBRIDGE = str(Path(sys.executable).with_name("fieldbridge"))
DEVICES = 100
WINDOW = 20_000  # QoS 1 messages the publisher keeps unacknowledged at most
BASE = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())  # recorded_at of message 0
CODEC_ENV = "MQTT_BENCH_CODEC"  # how --codec reaches the publisher subprocesses
CODEC = os.environ.get(CODEC_ENV) or ("smartcitizen" if "smartcitizen" in CODECS else "http-json")
SMARTCITIZEN = CODEC == "smartcitizen"


def message(n: int) -> tuple[str, bytes]:
    """Topic and payload of message `n`: device n % 100, a recorded_at of its own."""
    token = f"kit{n % DEVICES:03d}"
    at = BASE + n // DEVICES
    if SMARTCITIZEN:
        stamp = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = f'{{"data":[{{"recorded_at":"{stamp}","sensors":[{{"id":55,"value":21.5}}]}}]}}'
        return f"device/sck/{token}/readings", body.encode()
    body = f'{{"device":"{token}","ts":{at},"readings":{{"temperature":21.5}},"id":"m{n}"}}'
    return f"bench/{token}", body.encode()


TOPICS = ["device/sck/+/readings"] if SMARTCITIZEN else ["bench/+"]


# --- the load: a minimal MQTT 3.1.1 QoS 1 publisher ------------------------------------------
# Hand-written because the load must outrun the subscriber under test: paho's threaded
# publisher reaches about 5,000 msg/s on this machine, this one over 100,000 (it sends
# pre-encoded PUBLISH packets in large writes and counts PUBACKs on a second thread).


def _varlen(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _connect_packet(client_id: str) -> bytes:
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02" + struct.pack("!HH", 60, len(cid)) + cid  # clean session
    return b"\x10" + _varlen(len(body)) + body


def _publish_packet(topic: str, payload: bytes, mid: int) -> bytes:
    name = topic.encode()
    body = struct.pack("!H", len(name)) + name + struct.pack("!H", mid) + payload
    return b"\x32" + _varlen(len(body)) + body  # PUBLISH, QoS 1


def publish(port: int, first: int, count: int) -> dict[str, float]:
    """Publish messages first..first+count-1 at QoS 1; return when the broker acked them all.
    The packets are built before the clock starts: the load generator's own work does not
    compete with what it measures for the 2 cores."""
    packets = [_publish_packet(*message(first + i), i % 65535 + 1) for i in range(count)]
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(_connect_packet(f"bench-pub-{os.getpid()}"))
    if sock.recv(4)[:2] != b"\x20\x02":
        raise RuntimeError("the broker refused the publisher")
    window = threading.Semaphore(WINDOW)
    acked = [0]

    def count_pubacks() -> None:
        pending = b""
        while acked[0] < count:
            data = sock.recv(65536)
            if not data:
                return
            pending += data
            whole = len(pending) // 4  # PUBACK: 4 bytes each, the only packet we get
            acked[0] += whole
            pending = pending[whole * 4 :]
            for _ in range(whole):
                window.release()

    reader = threading.Thread(target=count_pubacks, daemon=True)
    reader.start()
    started, cpu = time.time(), time.process_time()
    chunk: list[bytes] = []
    for packet in packets:
        window.acquire()
        chunk.append(packet)
        if len(chunk) == 200:
            sock.sendall(b"".join(chunk))
            chunk.clear()
    if chunk:
        sock.sendall(b"".join(chunk))
    reader.join()
    finished = time.time()
    sock.sendall(b"\xe0\x00")  # DISCONNECT
    sock.close()
    cpu = time.process_time() - cpu
    return {"started": started, "finished": finished, "acked": acked[0], "cpu": cpu}


# --- the ceiling: a subscriber that only acknowledges ------------------------------------------


async def bare_subscriber(port: int, count: int, client_id: str) -> None:
    """Subscribe with fieldbridge's client code; PUBACK each message at once; print times."""
    from paho.mqtt.enums import CallbackAPIVersion

    from fieldbridge.sources.mqtt.client import FastClient, LoopDriver, open_socket, puback

    loop = asyncio.get_running_loop()
    client = FastClient(CallbackAPIVersion.VERSION2, client_id=client_id, manual_ack=True)
    LoopDriver(client, loop)
    subscribed = loop.create_future()
    done = loop.create_future()
    got = 0
    acks: list[bytes] = []

    def flush() -> None:
        client.queue_pubacks(b"".join(acks))
        acks.clear()

    def on_publish(topic: str, payload: bytes, qos: int, mid: int, retain: bool) -> None:
        nonlocal got
        got += 1
        if not acks:
            loop.call_soon(flush)
        acks.append(puback(mid))
        if got == count:
            done.set_result(time.time())

    client.on_publish_packet = on_publish
    client.on_message = lambda c, u, m: on_publish(m.topic, m.payload, m.qos, m.mid, m.retain)
    client.on_subscribe = lambda *a: subscribed.set_result(None)
    client.on_connect = lambda *a: client.subscribe([(t, 1) for t in TOPICS])
    client.connect_async("127.0.0.1", port)
    client.use_socket(open_socket("127.0.0.1", port, None, 5.0))
    client.reconnect()
    await subscribed
    print(json.dumps({"ready": True}), flush=True)
    finished = await done
    await asyncio.sleep(0.2)  # the last PUBACKs
    print(json.dumps({"finished": finished}), flush=True)


# --- the pieces of a run -------------------------------------------------------------------------


def mosquitto(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    binary = find_mosquitto()
    if binary is None:
        raise SystemExit("mosquitto is not installed (apt install mosquitto)")
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 0\nmax_inflight_messages 0\nmax_queued_bytes 0\n"
    )
    proc = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _wait_port(port)
    return proc


def _wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def start_publisher(port: int, first: int, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(HERE), "publish", str(port), str(first), str(count)],
        stdout=subprocess.PIPE,
        text=True,
    )


def publisher_result(proc: subprocess.Popen[str]) -> dict[str, float]:
    out, _ = proc.communicate(timeout=600)
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def ceiling(port: int, count: int) -> float:
    sub = subprocess.Popen(
        [sys.executable, str(HERE), "bare", str(port), str(count), f"bare-{time.time_ns()}"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert sub.stdout is not None
    json.loads(sub.stdout.readline())  # subscribed
    pub = publisher_result(start_publisher(port, 0, count))
    finished = json.loads(sub.stdout.readline())["finished"]
    sub.wait(30)
    return count / (finished - pub["started"])


class Fieldbridge:
    """`fieldbridge run` with one MQTT source on SQLite, in a subprocess; restartable."""

    def __init__(
        self, workdir: Path, port: int, name: str, ingest: str = "", extra: str = ""
    ) -> None:
        workdir.mkdir(parents=True)
        self.db = workdir / "fieldbridge.db"
        self.log = workdir / "fieldbridge.log"
        self.http = free_port()
        self.config = workdir / "fieldbridge.toml"
        self.config.write_text(
            f'[store]\nurl = "sqlite:///{self.db}"\n'
            f'[http]\nlisten = "127.0.0.1:{self.http}"\n'
            '[log]\nlevel = "info"\n'
            f"[ingest]\n{ingest}\n"
            f'[[sources.mqtt]]\nname = "bench"\nurl = "mqtt://127.0.0.1:{port}"\n'
            f'client_id = "{name}"\ntopics = {json.dumps(TOPICS)}\nqos = 1\ncodec = "{CODEC}"\n'
            'status_topic = ""\n' + extra
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        seen = self.log.read_text().count("subscribed to") if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [FIELDBRIDGE, "--config", str(self.config), "run"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={k: v for k, v in os.environ.items() if not k.startswith("FIELDBRIDGE_")},
            )
        deadline = time.monotonic() + 30
        while self.log.read_text().count("subscribed to") == seen:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fieldbridge did not subscribe:\n{self.log.read_text()}")
            time.sleep(0.02)

    def count(self, sql: str) -> int:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            return int(conn.execute(sql).fetchone()[0])
        finally:
            conn.close()

    def head(self) -> int:
        """The newest journal id: an index lookup, unlike count(*), so polling costs nothing."""
        return self.count("SELECT coalesce(max(id), 0) FROM journal")

    def wait_stored(self, total: int, stall: float = 15.0) -> float:
        """Poll until `total` journal rows exist (or nothing new for `stall` s); time of it."""
        last, last_change = -1, time.monotonic()
        while True:
            stored = self.head()
            now = time.time()
            if stored >= total:
                return now
            if stored != last:
                last, last_change = stored, time.monotonic()
            elif time.monotonic() - last_change > stall:
                return now
            time.sleep(0.02)

    def redelivered(self) -> int:
        """Payloads this process found already stored (redeliveries), from /metrics."""
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/metrics", timeout=5) as r:
            text = r.read().decode()
        return sum(
            int(float(line.rsplit(" ", 1)[1]))
            for line in text.splitlines()
            if line.startswith("fieldbridge_ingest_payloads_total") and "duplicate" in line
        )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)

    def stop(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)


def steady(port: int, workdir: Path, count: int, ingest: str = "") -> dict[str, float]:
    """A publisher as fast as the broker takes it; fieldbridge stores as fast as it can."""
    fb = Fieldbridge(workdir, port, f"fb-{workdir.name}", ingest)
    try:
        pub = start_publisher(port, 0, count)
        finished = fb.wait_stored(count)
        result = publisher_result(pub)
        stored = fb.count("SELECT count(*) FROM journal")
    finally:
        fb.stop()
    return {
        "rate": stored / (finished - result["started"]),
        "published": result["acked"],
        "stored": stored,
        "lost": result["acked"] - stored,
    }


def burst(port: int, workdir: Path, count: int) -> dict[str, float]:
    """`count` messages at once; fieldbridge is SIGKILLed a third of the way and restarted.

    The broker queues the burst for fieldbridge's persistent session and sends again what was
    not acknowledged before the kill: nothing may be lost and no reading stored twice.
    """
    fb = Fieldbridge(workdir, port, "fb-burst")
    try:
        pub = start_publisher(port, 10_000_000, count)
        while fb.head() < count // 3:
            time.sleep(0.01)
        fb.kill()
        fb.start()
        finished = fb.wait_stored(count)
        result = publisher_result(pub)
        redelivered = fb.redelivered()
        readings = fb.count("SELECT count(*) FROM readings")
        distinct = fb.count(
            "SELECT count(*) FROM (SELECT DISTINCT device, measured_at, quantity FROM readings)"
        )
        stored = fb.count("SELECT count(*) FROM journal")
    finally:
        fb.stop()
    return {
        "published": result["acked"],
        "stored": stored,
        "readings": readings,
        "lost": result["acked"] - distinct,
        "duplicates": readings - distinct,
        "redelivered": redelivered,
        "seconds": finished - result["started"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000, help="per steady run")
    parser.add_argument("--burst", type=int, default=50_000, help="messages in the burst")
    parser.add_argument(
        "--codec", choices=["smartcitizen", "http-json"], help="default: smartcitizen if present"
    )
    args = parser.parse_args()
    if args.codec and args.codec != CODEC:  # rerun with the choice in the environment
        os.environ[CODEC_ENV] = args.codec
        os.execv(sys.executable, [sys.executable, str(HERE), *sys.argv[1:]])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        port = free_port()
        broker = mosquitto(work, port)
        try:
            top = ceiling(port, args.messages)
            default = steady(port, work / "default", args.messages)
            large = steady(port, work / "batch2000", args.messages, "batch_size = 2000")
            wave = burst(port, work / "burst", args.burst)
        finally:
            broker.terminate()
            broker.wait(10)
    payload_bytes = len(message(0)[1])
    print(f"\ncodec {CODEC}, {payload_bytes}-byte payloads, QoS 1, {DEVICES} devices")
    print_table(
        "MQTT ingest, steady stream (a PUBACK only after commit)",
        ["subscriber", "messages", "stored", "lost", "msg/s", "of ceiling"],
        [
            ["bare subscriber, ack only (ceiling)", args.messages, "-", "-", top, "-"],
            *(
                [label, r["published"], r["stored"], r["lost"], r["rate"], f"{r['rate'] / top:.2f}"]
                for label, r in (
                    ("fieldbridge, SQLite, defaults", default),
                    ("fieldbridge, SQLite, batch_size 2000", large),
                )
            ),
        ],
    )
    print_table(
        f"burst of {args.burst:,} messages, fieldbridge SIGKILLed a third of the way",
        ["published", "journal rows", "readings", "lost", "duplicate readings", "redelivered", "s"],
        [
            [
                wave["published"],
                wave["stored"],
                wave["readings"],
                wave["lost"],
                wave["duplicates"],
                wave["redelivered"],
                wave["seconds"],
            ]
        ],
    )
    final_line("mqtt_ingest", default["rate"], "msg/s", top, default["rate"] / top)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "publish":
        port, first, count = (int(v) for v in sys.argv[2:5])
        print(json.dumps(publish(port, first, count)), flush=True)
    elif len(sys.argv) > 1 and sys.argv[1] == "bare":
        import uvloop

        uvloop.run(bare_subscriber(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
    else:
        main()
