"""Node-RED as a benchmark peer: installed from the npm registry under var/bench/node-red/ (never
a project dependency) and run with an `mqtt in → json → function → influxdb out` flow."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEER_DIR = ROOT / "var" / "bench" / "node-red"
PACKAGES = ("node-red@4.1.15", "node-red-contrib-influxdb@0.7.0")

# The function node turns the generic JSON of the benchmark into the influxdb out node's
# [fields, tags] form, with the message's own time, as a user's flow would.
SHAPE = (
    "const p = msg.payload;\n"
    "msg.payload = [{temperature: p.readings.temperature, time: new Date(p.ts * 1000)},"
    " {device: p.device}];\n"
    "return msg;"
)


def install() -> Path:
    """The node-red launcher, installed with npm on first use."""
    command = PEER_DIR / "node_modules" / ".bin" / "node-red"
    if not command.exists():
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit("npm is not installed (apt install npm); --no-peer skips Node-RED")
        PEER_DIR.mkdir(parents=True, exist_ok=True)
        print(f"installing {' '.join(PACKAGES)} into {PEER_DIR} ...", flush=True)
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(PEER_DIR), *PACKAGES],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return command


def flow(
    mqtt_port: int, topic: str, influx_port: int, database: str, measurement: str
) -> list[dict[str, object]]:
    return [
        {"id": "b_tab", "type": "tab", "label": "bench"},
        {
            "id": "b_broker",
            "type": "mqtt-broker",
            "name": "bench",
            "broker": "127.0.0.1",
            "port": str(mqtt_port),
            "clientid": f"nodered-bench-{os.getpid()}",
            "autoConnect": True,
            "usetls": False,
            "protocolVersion": "4",
            "keepalive": "60",
            "cleansession": True,
        },
        {
            "id": "b_in",
            "type": "mqtt in",
            "z": "b_tab",
            "topic": topic,
            "qos": "1",
            "datatype": "utf8",
            "broker": "b_broker",
            "nl": False,
            "rap": True,
            "rh": 0,
            "inputs": 0,
            "wires": [["b_json"]],
        },
        {
            "id": "b_json",
            "type": "json",
            "z": "b_tab",
            "property": "payload",
            "action": "obj",
            "pretty": False,
            "wires": [["b_shape"]],
        },
        {
            "id": "b_shape",
            "type": "function",
            "z": "b_tab",
            "name": "shape",
            "func": SHAPE,
            "outputs": 1,
            "wires": [["b_out"]],
        },
        {
            "id": "b_influx",
            "type": "influxdb",
            "hostname": "127.0.0.1",
            "port": str(influx_port),
            "protocol": "http",
            "database": database,
            "usetls": False,
            "influxdbVersion": "1.x",
        },
        {
            "id": "b_out",
            "type": "influxdb out",
            "z": "b_tab",
            "influxdb": "b_influx",
            "measurement": measurement,
            "precision": "",
            "retentionPolicy": "",
            "wires": [],
        },
    ]


class NodeRed:
    """One Node-RED process running the benchmark flow; waits until it is subscribed."""

    def __init__(
        self, workdir: Path, command: Path, http_port: int, nodes: list[dict[str, object]]
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        flows = workdir / "flows.json"
        flows.write_text(json.dumps(nodes))
        self.log = workdir / "node-red.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(command), "-u", str(workdir / "user"), "-p", str(http_port), str(flows)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while "Connected to broker" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Node-RED did not connect:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def errors(self) -> int:
        return self.log.read_text(errors="replace").count("[error]")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
