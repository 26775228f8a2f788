"""ThingsBoard gateway-mode delivery: journal messages acknowledged by ThingsBoard per second.

Measures, in one run, against the fake ThingsBoard of the tests (tests/fakes/thingsboard.py: a
real Mosquitto checking the gateway token, the token front, a checking subscriber), run in a
subprocess of its own so its checking does not share this process:
  * fieldbridge: the real sink engine and ThingsBoard destination (gateway mode, QoS 1, the
    cursor moved after PUBACK of every publish) over a SQLite store prefilled with the
    messages, route.flag = "thingsboard" on every device; msg/s from start to the last cursor
    move, and lost points (what the checking subscriber did not receive);
  * the reference: a bare paho publisher (paho's own network thread, the same in-flight window
    of 100) sending the same prebuilt payloads (the v1/gateway/connect and v1/gateway/telemetry
    payloads of the same batches, rendered beforehand) at QoS 1, timed until the last PUBACK.
  * the peer: ThingsBoard IoT Gateway (`thingsboard-gateway` from PyPI, installed on first use
    in its own venv under var/bench/thingsboard-gateway/, never a project dependency) with its
    MQTT connector taking the same readings from a Mosquitto of its own and sending them to the
    same fake (which answers its getSessionLimits RPC); msg/s and lost points.

Run: .venv/bin/python bench/thingsboard.py   (about two minutes on 2 cores; --no-peer skips it)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))
from common import final_line, print_table
from fieldbridge.codecs import http_json
from fieldbridge.ingest import Ingest
from fieldbridge.model import Accepted
from fieldbridge.plugin import RouteSettings
from fieldbridge.sinks.engine import SinkRunner
from fieldbridge.sinks.thingsboard import ThingsBoardDestination
from fieldbridge.sinks.thingsboard_gateway import GatewayLink
from fieldbridge.sinks.thingsboard_mqtt import MAX_INFLIGHT
from fieldbridge.sinks.thingsboard_render import gateway_connect, gateway_telemetry, points
from fieldbridge.sinks.thingsboard_settings import ThingsBoardSettings
from fieldbridge.store import Store, open_store, parse_store_url
from fieldbridge.store.migrate import upgrade

TOKEN = "BenchGatewayToken"
KEYS = ("VBat", "count", "RSSI")
DEVICES = 100
T0 = 1_767_225_600.0  # 2026-01-01 UTC; message n is measured at T0 + n / 10
SINK = "tb-bench"
LARGE_BATCH = 5000


def message(n: int) -> bytes:
    body = {
        "device": f"trap-{n % DEVICES:03d}",
        "kind": "trapnet",
        "ts": T0 + n / 10,
        "readings": {"VBat": 3.5 + (n % 50) / 100, "count": n % 7, "RSSI": -60 - n % 30},
        "id": f"m{n}",
    }
    return json.dumps(body).encode()


async def fill(store: Store, count: int) -> list[int]:
    ids: list[int] = []
    async with Ingest(store) as feed:
        for start in range(0, count, 2000):
            outcomes = await asyncio.gather(
                *(
                    feed.submit("http", message(n), http_json.decode, {})
                    for n in range(start, min(count, start + 2000))
                )
            )
            for outcome in outcomes:
                assert isinstance(outcome, Accepted), outcome
                ids.extend(outcome.ids)
    for device in range(DEVICES):
        await store.update_device(f"trap-{device:03d}", flags={"thingsboard": True})
    return ids


def sink_settings(url: str, batch_size: int, name: str = SINK) -> ThingsBoardSettings:
    return ThingsBoardSettings(
        name=name,
        url=url,
        token=TOKEN,
        batch_size=batch_size,
        route=RouteSettings(flag="thingsboard"),
    )


async def prebuilt(
    store: Store, settings: ThingsBoardSettings, *, batched: bool
) -> list[tuple[str, bytes]]:
    """The journal's messages as gateway publishes, rendered beforehand: one publish per
    message, or (batched) the very publishes the sink makes, a batch's points in one."""
    out: list[tuple[str, bytes]] = []
    link = GatewayLink(settings)
    seen: set[str] = set()
    cursor = 0
    while entries := await store.read_journal(cursor, settings.batch_size, with_payload=False):
        for entry in entries:
            if entry.device not in seen:
                seen.add(entry.device)
                out.append(("v1/gateway/connect", gateway_connect(entry.device, entry.kind)))
        if batched:
            out.extend(("v1/gateway/telemetry", p) for p in link._telemetry(entries))
        else:
            out.extend(
                ("v1/gateway/telemetry", gateway_telemetry({e.device: points(e)})) for e in entries
            )
        cursor = entries[-1].id
    return out


def bare_paho(port: int, payloads: list[tuple[str, bytes]]) -> float:
    """Seconds a bare paho publisher takes to get every payload PUBACKed."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-bare-paho")
    client.username_pw_set(TOKEN, "")
    client.max_inflight_messages_set(MAX_INFLIGHT)
    done = threading.Event()
    acked = 0

    def on_publish(*args: Any) -> None:
        nonlocal acked
        acked += 1
        if acked == len(payloads):
            done.set()

    client.on_publish = on_publish
    connected = threading.Event()
    client.on_connect = lambda *a: connected.set()
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    if not connected.wait(10):
        raise RuntimeError("the bare publisher could not connect")
    began = time.perf_counter()
    for topic, payload in payloads:
        client.publish(topic, payload, qos=1)
    if not done.wait(300):
        raise RuntimeError(f"only {acked} of {len(payloads)} PUBACKs")
    seconds = time.perf_counter() - began
    client.disconnect()
    client.loop_stop()
    return seconds


async def fieldbridge_run(store: Store, settings: ThingsBoardSettings, last: int) -> float:
    """Seconds from the sink's start until its stored cursor is at `last`."""
    runner = SinkRunner("thingsboard", settings, ThingsBoardDestination(settings), store)
    began = time.perf_counter()
    task = asyncio.create_task(runner.run())
    # The stored cursor is what counts as delivered; polled, as the CLI's `sinks status` reads it.
    while (await store.sink_state(settings.name)).cursor < last:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    seconds = time.perf_counter() - began
    runner.stop()
    await task
    return seconds


class Fake:
    """The fake ThingsBoard in a subprocess (`thingsboard.py fake DIR`), asked over stdin."""

    def __init__(self, workdir: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "fake", str(workdir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.info = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the fake ThingsBoard ended")
        data: dict[str, Any] = json.loads(line)
        return data

    def ask(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("count\n")
        self.proc.stdin.flush()
        return self._read()

    def wait_points(self, total: int, stall: float = 10.0) -> dict[str, Any]:
        """Poll until `total` points arrived, or nothing new came for `stall` seconds."""
        last, since = self.ask(), time.monotonic()
        while last["points"] < total and time.monotonic() - since < stall:
            time.sleep(0.2)
            now = self.ask()
            if now["points"] != last["points"]:
                since = time.monotonic()
            last = now
        return last

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        self.proc.wait(30)


PEER_VERSION = "3.8.5"
PEER_DIR = ROOT / "var" / "bench" / "thingsboard-gateway"
PEER_TOKEN = "PeerGatewayToken"


def peer_command() -> Path:
    """thingsboard-gateway in its own venv under the scratch folder, installed if missing."""
    venv = PEER_DIR / f"venv-{PEER_VERSION}"
    command = venv / "bin" / "thingsboard-gateway"
    if not command.exists():
        print(f"installing thingsboard-gateway {PEER_VERSION} into {venv} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", f"thingsboard-gateway=={PEER_VERSION}"],
            check=True,
        )
    return command


def peer_config(cfg: Path, tb_port: int, source_port: int, command: Path) -> None:
    """The gateway's settings: the fake as its ThingsBoard, an MQTT connector on the source
    broker mapping trap/<device>/data JSON to the three telemetry keys."""
    cfg.mkdir(parents=True, exist_ok=True)
    gateway = {
        "thingsboard": {
            "host": "127.0.0.1",
            "port": tb_port,
            "remoteShell": False,
            "remoteConfiguration": False,
            "statistics": {"enable": False, "statsSendPeriodInSeconds": 3600},
            "deviceFiltering": {"enable": False},
            "maxPayloadSizeBytes": 65536,
            "minPackSendDelayMS": 50,
            "minPackSizeToSend": 500,
            "checkConnectorsConfigurationInSeconds": 3600,
            "handleDeviceRenaming": False,
            "security": {"type": "accessToken", "accessToken": PEER_TOKEN},
            "qos": 1,
            "reportStrategy": {"type": "ON_RECEIVED"},
            "checkingDeviceActivity": {"checkDeviceInactivity": False},
        },
        "storage": {"type": "memory", "read_records_count": 100, "max_records_count": 1_000_000},
        "grpc": {"enabled": False},
        "connectors": [{"type": "mqtt", "name": "MQTT", "configuration": "mqtt.json"}],
    }
    timeseries = [{"type": "double", "key": k, "value": f"${{{k}}}"} for k in KEYS]
    connector = {
        "broker": {
            "host": "127.0.0.1",
            "port": source_port,
            "clientId": "bench-peer-gateway",
            "version": 4,
            "maxMessageNumberPerWorker": 10,
            "maxNumberOfWorkers": 100,
            "cleanSession": True,
            "security": {"type": "anonymous"},
        },
        "mapping": [
            {
                "topicFilter": "trap/+/data",
                "subscriptionQos": 1,
                "converter": {
                    "type": "json",
                    "deviceInfo": {
                        "deviceNameExpressionSource": "topic",
                        "deviceNameExpression": "(?<=trap/)(.*?)(?=/data)",
                        "deviceProfileExpressionSource": "constant",
                        "deviceProfileExpression": "trapnet",
                    },
                    "sendDataOnlyOnChange": False,
                    "timeout": 60000,
                    "attributes": [],
                    "timeseries": timeseries,
                },
            }
        ],
        "requestsMapping": {},
    }
    (cfg / "tb_gateway.json").write_text(json.dumps(gateway))
    (cfg / "mqtt.json").write_text(json.dumps(connector))
    package = next(command.parent.parent.glob("lib/python*/site-packages/thingsboard_gateway"))
    (cfg / "logs.json").write_text((package / "config" / "logs.json").read_text())


def run_peer(work: Path, fake: Fake, count: int) -> dict[str, Any]:
    """The peer's msg/s and lost points for `count` readings published on its source broker."""
    from tests.support.mqtt_broker import Mosquitto, client

    command = peer_command()
    source = Mosquitto(work / "peer-source")
    source.start()
    peer_config(work / "peer-cfg", fake.info["port"], source.port, command)
    env = {**os.environ, "TB_GW_CONFIG_DIR": str(work / "peer-cfg")}
    with (work / "peer.log").open("wb") as log:
        peer = subprocess.Popen(
            [str(command)], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    publisher = client(source.port, "bench-peer-source")
    try:
        # Warm up: the gateway is ready once a first reading came through it.
        before = fake.ask()
        deadline = time.monotonic() + 60
        while fake.ask()["warmup"] == before["warmup"]:
            if time.monotonic() > deadline or peer.poll() is not None:
                raise RuntimeError(f"the peer sent nothing; see {work / 'peer.log'}")
            publisher.publish("trap/warmup/data", reading(0), qos=1)
            time.sleep(0.5)
        start = fake.ask()
        began = time.perf_counter()
        for n in range(count):
            publisher.publish(f"trap/trap-{n % DEVICES:03d}/data", reading(n), qos=1)
        last, last_at = start["points"], time.perf_counter()
        while last - start["points"] < count:
            time.sleep(0.2)
            now = fake.ask()["points"]
            if now != last:
                last, last_at = now, time.perf_counter()
            elif time.perf_counter() - last_at > 15:
                break
        received = last - start["points"]
        distinct = fake.ask()["peer_readings"] - start["peer_readings"]
        return {
            "rate": received / (last_at - began),
            "seconds": last_at - began,
            "received": received,
            "lost": count - distinct,
            "violations": fake.ask()["violations"] - before["violations"],
        }
    finally:
        publisher.disconnect()
        publisher.loop_stop()
        peer.terminate()
        try:
            peer.wait(20)
        except subprocess.TimeoutExpired:
            peer.kill()
        source.kill()


PEER_MARK = '"count": 1'  # the peer's readings have count 1000000 + n: each one is distinct


def reading(n: int) -> bytes:
    """Reading n as a device publishes it to the peer's source broker."""
    body = {"VBat": 3.5 + (n % 50) / 100, "count": 1_000_000 + n, "RSSI": -60 - n % 30}
    return json.dumps(body).encode()


def serve_fake(workdir: Path) -> None:
    from tests.fakes.thingsboard import FakeThingsBoard

    tokens = {TOKEN: "gateway", PEER_TOKEN: "peer-gateway"}
    with FakeThingsBoard(workdir, gateway_tokens=tokens) as fake:
        print(json.dumps({"url": fake.url, "port": fake.port}), flush=True)
        for line in sys.stdin:
            if line.strip() != "count":
                break
            series = dict(fake.recorded.timeseries)
            counted = dict(fake.recorded.points)
            answer = {
                "points": sum(v for k, v in counted.items() if k.startswith("trap-")),
                "distinct": sum(len(v) for k, v in series.items() if k.startswith("trap-")),
                "warmup": counted.get("warmup", 0),
                "peer_readings": sum(
                    1 for d, v in list(fake.recorded.distinct_values) if PEER_MARK in v
                ),
                "violations": len(fake.violations),
            }
            print(json.dumps(answer), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--peer-messages", type=int, default=20_000)
    parser.add_argument("--no-peer", action="store_true", help="skip ThingsBoard IoT Gateway")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fake = Fake(work / "tb")
        try:
            result = asyncio.run(run(work, fake, args.messages, args.batch_size))
            peer = None if args.no_peer else run_peer(work, fake, args.peer_messages)
        finally:
            fake.close()
    rate, reference = result["rate"], result["reference"]
    print_table(
        f"ThingsBoard gateway mode, {args.messages:,} messages of {DEVICES} devices, QoS 1, "
        f"batch_size {args.batch_size}",
        ["sender", "publishes", "seconds", "msg/s", "lost points", "of reference"],
        [
            ["bare paho, a publish per message (reference)", result["publishes"],
             result["bare_s"], reference, "-", "-"],
            ["bare paho, the sink's batched publishes (ceiling)", result["ceiling_publishes"],
             result["ceiling_s"], result["ceiling"], "-",
             f"{result['ceiling'] / reference:.2f}"],
            ["fieldbridge sink (engine, SQLite, cursor)", "-", result["fb_s"], rate,
             result["lost"], f"{rate / reference:.2f}"],
            [f"fieldbridge sink, batch_size {LARGE_BATCH:,}", "-", result["large_s"],
             result["large_rate"], result["large_lost"],
             f"{result['large_rate'] / reference:.2f}"],
        ],
    )  # fmt: skip
    if peer is not None:
        print_table(
            f"peer: ThingsBoard IoT Gateway {PEER_VERSION} (MQTT connector), "
            f"{args.peer_messages:,} readings published at QoS 1 on its source broker",
            ["sender", "seconds", "points received", "msg/s", "lost readings",
             "fieldbridge / peer"],
            [["thingsboard-gateway", peer["seconds"], peer["received"], peer["rate"],
              peer["lost"], f"{rate / peer['rate']:.1f}"]],
        )  # fmt: skip
        print(f"\ncontract violations by the peer: {peer['violations']}")
    print(f"contract violations by fieldbridge and the bare publisher: {result['violations']}")
    final_line("thingsboard", rate, "msg/s", reference, rate / reference)


async def run(work: Path, fake: Fake, count: int, batch_size: int) -> dict[str, Any]:
    url = f"sqlite:///{work / 'bench.db'}"
    upgrade(parse_store_url(url))
    async with open_store(url) as store:
        ids = await fill(store, count)
        settings = sink_settings(fake.info["url"], batch_size)
        single = await prebuilt(store, settings, batched=False)
        payloads = await prebuilt(store, settings, batched=True)
        expected = count * 1  # one point per message
        fb_s = await fieldbridge_run(store, settings, ids[-1])
        after_fb = await asyncio.to_thread(fake.wait_points, expected)
        large = sink_settings(fake.info["url"], LARGE_BATCH, name=f"{SINK}-large")
        large_s = await fieldbridge_run(store, large, ids[-1])
        after_large = await asyncio.to_thread(fake.wait_points, 2 * expected)
        bare, ceiling = [], []
        for _ in range(3):  # alternating, the median of each
            bare.append(await asyncio.to_thread(bare_paho, fake.info["port"], single))
            ceiling.append(await asyncio.to_thread(bare_paho, fake.info["port"], payloads))
        bare_s, ceiling_s = statistics.median(bare), statistics.median(ceiling)
        after_bare = await asyncio.to_thread(fake.wait_points, 8 * expected)
    return {
        "rate": count / fb_s,
        "reference": count / bare_s,
        "fb_s": fb_s,
        "bare_s": bare_s,
        "publishes": len(single),
        "ceiling": count / ceiling_s,
        "ceiling_s": ceiling_s,
        "ceiling_publishes": len(payloads),
        "lost": expected - after_fb["distinct"],
        "large_rate": count / large_s,
        "large_s": large_s,
        "large_lost": max(0, expected - (after_large["points"] - after_fb["points"])),
        "violations": after_bare["violations"],
    }


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "fake":
        serve_fake(Path(sys.argv[2]))
    else:
        main()
