"""Process lifecycle: graceful stop on SIGTERM/SIGINT, refusal of bad settings, logging output."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest

from tests.conftest import eventually
from tests.support.processes import FieldbridgeProcess, WebhookReceiver, run_cli

CLIENTS = 4
STOP_WITHIN = 10.0  # seconds the issue allows from the signal to exit
LOAD_BEFORE_SIGNAL = 1.5  # seconds of posting before the signal


@dataclass
class Outcomes:
    """What every request of the clients got back."""

    acked: dict[str, int] = field(default_factory=dict)  # idempotency key -> acknowledged id
    refused: Counter[str] = field(default_factory=Counter)  # connection errors and 503s, by kind
    unexpected: list[str] = field(default_factory=list)  # any other answer: a bug
    sent: set[str] = field(default_factory=set)


async def post_until(
    number: int, proc: FieldbridgeProcess, outcomes: Outcomes, done: asyncio.Event
) -> None:
    """Post single messages back to back until `done`; record every answer."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(15.0, connect=2.0)) as http:
        i = 0
        while not done.is_set():
            key = f"c{number}-{i}"
            i += 1
            outcomes.sent.add(key)
            body = orjson.dumps({"device": f"dev-{number}", "readings": {"n": i}, "id": key})
            try:
                response = await http.post(
                    proc.ingest_url, content=body, headers={"Content-Type": "application/json"}
                )
            except httpx.TransportError as exc:
                outcomes.refused[type(exc).__name__] += 1
                await asyncio.sleep(0.05)
                continue
            if response.status_code == 200:
                outcomes.acked[key] = response.json()["ids"][0]
            elif response.status_code == 503:
                outcomes.refused["503"] += 1
            else:
                outcomes.unexpected.append(f"{response.status_code} {response.text[:200]}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_under_load_stops_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    outcomes = Outcomes()
    done = asyncio.Event()
    with (
        WebhookReceiver() as receiver,
        FieldbridgeProcess(
            tmp_path, sinks={"webhook": [{"name": "hook", "url": receiver.url}]}
        ) as proc,
    ):
        await asyncio.to_thread(proc.start)
        clients = [asyncio.create_task(post_until(k, proc, outcomes, done)) for k in range(4)]
        try:
            await asyncio.sleep(
                LOAD_BEFORE_SIGNAL
            )  # load runs meanwhile: pacing, not waiting for a condition
            acked_before = len(outcomes.acked)
            proc.send(sig)
            signalled = time.monotonic()
            try:
                code = await asyncio.to_thread(proc.wait, STOP_WITHIN)
            except subprocess.TimeoutExpired:
                pytest.fail(
                    f"still running {STOP_WITHIN:.0f}s after {sig.name}:\n{proc.log_tail()}"
                )
            stopped_after = time.monotonic() - signalled
            # Keep posting a moment against the stopped service: those must all be refused.
            await asyncio.sleep(0.3)  # a window of posts against the stopped service
        finally:
            done.set()
            await asyncio.gather(*clients)
        output = proc.output()
        stored = dict(proc.query("SELECT idem_key, id FROM journal"))
        readings = dict(
            proc.query(
                "SELECT j.idem_key, COUNT(r.message_id) FROM journal j "
                "LEFT JOIN readings r ON r.message_id = j.id GROUP BY j.idem_key"
            )
        )

    print(
        f"\n{sig.name} under load: exit {code} after {stopped_after:.2f}s; "
        f"acknowledged={len(outcomes.acked)} (before the signal {acked_before}) "
        f"stored={len(stored)} refused={dict(outcomes.refused)} delivered={len(receiver.ids())}"
    )
    assert code == 0, proc.log_tail()
    assert "fieldbridge stopped" in output
    assert "Traceback" not in output, output
    assert acked_before > 0, "the clients never got an answer before the signal"
    # In flight at the signal: a 2xx (then stored) or a refusal, never anything else.
    assert not outcomes.unexpected, outcomes.unexpected[:5]
    assert outcomes.refused, "nothing was refused although posting went on after the exit"
    missing = [key for key in outcomes.acked if key not in stored]
    assert not missing, f"acknowledged but not stored: {missing[:5]}"
    assert all(stored[key] == mid for key, mid in outcomes.acked.items())
    # Refused requests may or may not have been committed, but never half: one reading each.
    assert set(stored) <= outcomes.sent
    assert all(count == 1 for count in readings.values())


async def test_sigterm_when_idle_exits_zero(tmp_path: Path) -> None:
    with FieldbridgeProcess(tmp_path) as proc:
        await asyncio.to_thread(proc.start)
        proc.terminate()
        assert await asyncio.to_thread(proc.wait, STOP_WITHIN) == 0
        assert "fieldbridge stopped" in proc.output()


async def test_sigterm_while_a_sink_send_hangs(tmp_path: Path) -> None:
    """A destination that never answers must not hold the process, nor move the cursor."""
    with (
        WebhookReceiver(hang=True) as receiver,
        FieldbridgeProcess(
            tmp_path, sinks={"webhook": [{"name": "hook", "url": receiver.url, "timeout": 60.0}]}
        ) as proc,
    ):
        await asyncio.to_thread(proc.start)
        async with httpx.AsyncClient() as http:
            posted = await http.post(proc.ingest_url, json={"device": "d", "readings": {"t": 1}})
        assert posted.status_code == 200
        await eventually(lambda: receiver.held >= 1, "the sink's send to reach the receiver")
        proc.terminate()
        assert await asyncio.to_thread(proc.wait, STOP_WITHIN) == 0, proc.log_tail()
        cursor = proc.query("SELECT COALESCE(MAX(cursor), 0) FROM sink_state")[0][0]
        stored = proc.query("SELECT COUNT(*) FROM journal")[0][0]
    assert stored == 1
    assert cursor == 0, "the cursor moved past a message the destination never confirmed"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[http]\nlisten = "127.0.0.1:1"\nlisten_port = 8080\n', "http.listen_port"),
        ("[ingest]\nbatch_size = 0\n", "ingest.batch_size"),
        ('[[sinks.webhook]]\nname = "hook"\nurl = "not a url"\n', "sinks.webhook[0].url"),
        ('[[sinks.webhook]]\nname = "hook"\nurl = "http://x"\nretries = 3\n', "retries"),
    ],
    ids=["unknown-key", "bad-value", "bad-sink-url", "unknown-sink-key"],
)
def test_invalid_settings_exit_2_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    done = run_cli("run", config=bad, cwd=tmp_path)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert key in done.stderr, done.stderr
    assert not (tmp_path / "var").exists(), "a rejected config must not touch the store"


def test_port_in_use_names_http_listen(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        proc = FieldbridgeProcess(tmp_path, port=port)
        done = proc.cli("run", timeout=30.0)
    assert done.returncode != 0, done.stderr
    assert "http.listen" in done.stderr, done.stderr
    assert str(port) in done.stderr, done.stderr


async def test_json_logs_are_one_object_a_line(tmp_path: Path) -> None:
    with FieldbridgeProcess(tmp_path, log={"level": "info", "format": "json"}) as proc:
        await asyncio.to_thread(proc.start)
        async with httpx.AsyncClient() as http:
            bad = await http.post(
                proc.ingest_url, content=b"{", headers={"Content-Type": "application/json"}
            )
        assert bad.status_code == 400
        proc.terminate()
        assert await asyncio.to_thread(proc.wait, STOP_WITHIN) == 0
        lines = [line for line in proc.output().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line, or this raises
    assert records
    for record in records:
        assert isinstance(record, dict)
        assert {"level", "logger", "message", "time"} <= record.keys(), record
    messages = [r["message"] for r in records]
    assert any(m.startswith("fieldbridge serving on http://127.0.0.1:") for m in messages)
    assert any(r["logger"] == "fieldbridge" and r["level"] == "INFO" for r in records)
    assert messages[-1] == "fieldbridge stopped"


async def test_log_file_and_component_levels(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "fieldbridge.log"
    settings = {"level": "warning", "levels": {"fieldbridge": "info"}, "file": str(log_file)}
    with FieldbridgeProcess(tmp_path, log=settings) as proc:
        await asyncio.to_thread(proc.start)
        proc.terminate()
        assert await asyncio.to_thread(proc.wait, STOP_WITHIN) == 0
        stderr = proc.output()
    written = log_file.read_text()
    for text in (written, stderr):
        assert "fieldbridge serving on http://127.0.0.1:" in text
        assert "fieldbridge stopped" in text
        # uvicorn's INFO lines stay below the root level of warning.
        assert "Started server process" not in text
