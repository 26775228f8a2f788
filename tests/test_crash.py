"""Crash test: SIGKILL fieldbridge under load, restart it, prove nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest

from tests.support.processes import FieldbridgeProcess, WebhookReceiver

MESSAGES = 20_000
CLIENTS = 4
MAX_PER_POST = 5  # messages per POST, 1 to this; a single goes as a bare object, the worst case
KILLS = 10
SINK = "crash-hook"
# Seconds after the store file appears: the first start's schema creation lasts about 0.1 s.
FIRST_START_KILL_DELAYS = (0.0, 0.01, 0.02, 0.035, 0.05, 0.07, 0.1)
CATCH_UP_TIMEOUT = 60.0  # seconds for the sink to deliver the whole journal after the load


@dataclass
class Tally:
    """What the clients and the killer saw."""

    acked: dict[str, int] = field(default_factory=dict)  # idempotency key -> acknowledged id
    posts: int = 0
    transport_errors: int = 0
    unavailable: int = 0  # 503 answers
    repeats: int = 0  # messages acknowledged as already stored (an earlier answer was lost)
    kills: int = 0
    restarts: int = 0
    kills_under_load: int = 0
    progress: asyncio.Event = field(default_factory=asyncio.Event)  # set on every acknowledgement


def message(n: int) -> dict[str, object]:
    return {"device": f"dev-{n % 50}", "readings": {"seq": n}, "id": f"m-{n}"}


async def client(number: int, proc: FieldbridgeProcess, tally: Tally, rng: random.Random) -> None:
    """Post this client's share of the messages; retry each post until it gets a 2xx."""
    mine = list(range(number, MESSAGES, CLIENTS))
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=2.0)) as http:
        start = 0
        while start < len(mine):
            chunk = mine[start : start + rng.randint(1, MAX_PER_POST)]
            start += len(chunk)
            single = len(chunk) == 1
            body = orjson.dumps(message(chunk[0]) if single else [message(n) for n in chunk])
            while True:
                tally.posts += 1
                try:
                    response = await http.post(
                        proc.ingest_url,  # read each time: a restart may move the port
                        content=body,
                        headers={"Content-Type": "application/json"},
                    )
                except httpx.TransportError:
                    tally.transport_errors += 1
                    await asyncio.sleep(rng.uniform(0.02, 0.1))
                    continue
                if response.status_code == 503:
                    tally.unavailable += 1
                    await asyncio.sleep(rng.uniform(0.02, 0.1))
                    continue
                assert response.status_code == 200, (response.status_code, response.text)
                answer = response.json()
                ids = answer["ids"]
                assert len(ids) == len(chunk), response.text
                tally.repeats += answer["duplicates"]
                for n, mid in zip(chunk, ids, strict=True):
                    tally.acked[f"m-{n}"] = mid
                tally.progress.set()
                break


async def killer(proc: FieldbridgeProcess, tally: Tally, rng: random.Random) -> None:
    """SIGKILL the service at random instants of the load, restarting it each time.

    Kill points are spread over the load by acknowledged-message count, so all of them land
    while clients are posting however fast this machine is; a random delay moves each one off
    any batch boundary.
    """
    marks = sorted(rng.sample(range(MESSAGES // 20, MESSAGES * 9 // 10), KILLS))
    for mark in marks:
        while len(tally.acked) < mark:
            tally.progress.clear()
            await tally.progress.wait()
        await asyncio.sleep(rng.uniform(0.0, 0.3))
        if len(tally.acked) < MESSAGES:
            tally.kills_under_load += 1
        assert proc.running, f"fieldbridge died on its own:\n{proc.log_tail()}"
        await asyncio.to_thread(proc.kill)
        tally.kills += 1
        await asyncio.to_thread(proc.start)
        tally.restarts += 1


async def wait_for_sink(proc: FieldbridgeProcess) -> tuple[int, int]:
    """Wait until the sink's stored cursor reached the journal's head; return both."""
    cursor = head = 0
    try:
        async with asyncio.timeout(CATCH_UP_TIMEOUT):
            while True:
                head = proc.query("SELECT COALESCE(MAX(id), 0) FROM journal")[0][0]
                rows = proc.query("SELECT cursor FROM sink_state WHERE name = ?", (SINK,))
                cursor = rows[0][0] if rows else 0
                if cursor >= head:
                    return cursor, head
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"sink stuck at {cursor} of {head}:\n{proc.log_tail()}") from None


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_sigkill_under_load_loses_nothing(tmp_path: Path) -> None:
    seed = int(os.environ.get("FIELDBRIDGE_CRASH_SEED", str(time.time_ns())))
    rng = random.Random(seed)
    tally = Tally()
    started = time.monotonic()
    with (
        WebhookReceiver() as receiver,
        FieldbridgeProcess(
            tmp_path,
            sinks={"webhook": [{"name": SINK, "url": receiver.url, "batch_size": 500}]},
            log={"level": "warning"},
        ) as proc,
    ):
        await asyncio.to_thread(proc.start)
        async with asyncio.TaskGroup() as load:  # one failing client stops them all
            load.create_task(killer(proc, tally, rng))
            for k in range(CLIENTS):
                load.create_task(client(k, proc, tally, random.Random(seed + k)))
        load_s = time.monotonic() - started

        cursor, head = await wait_for_sink(proc)
        status = {row["name"]: row for row in await asyncio.to_thread(proc.sinks_status)}
        proc.terminate()
        exit_code = await asyncio.to_thread(proc.wait, 10.0)

        stored = dict(proc.query("SELECT idem_key, id FROM journal"))
        copies = proc.query("SELECT idem_key, COUNT(*) FROM journal GROUP BY idem_key")
        readings = dict(
            proc.query(
                "SELECT j.idem_key, COUNT(r.message_id) FROM journal j "
                "LEFT JOIN readings r ON r.message_id = j.id GROUP BY j.idem_key"
            )
        )
        seq_values = dict(
            proc.query(
                "SELECT j.idem_key, r.value FROM journal j JOIN readings r ON r.message_id = j.id"
            )
        )
        delivered = receiver.ids()
        receiver_dups = receiver.duplicates()

    print(
        f"\ncrash test (seed {seed}): acknowledged={len(tally.acked)} stored={len(stored)} "
        f"duplicates-at-receiver={receiver_dups} kills={tally.kills} "
        f"restarts={tally.restarts}\n"
        f"  kills under load={tally.kills_under_load} posts={tally.posts} "
        f"transport-errors={tally.transport_errors} 503s={tally.unavailable} "
        f"acknowledged-as-repeats={tally.repeats}\n"
        f"  delivered={len(delivered)} batches-at-receiver={receiver.batches} "
        f"sink cursor={cursor} head={head} load {load_s:.1f}s "
        f"total {time.monotonic() - started:.1f}s"
    )
    assert exit_code == 0, proc.log_tail()
    assert tally.kills == KILLS and tally.restarts == KILLS
    assert len(tally.acked) == MESSAGES
    assert not receiver.errors, receiver.errors[:3]

    # Every acknowledged message is stored exactly once, under the id it was acknowledged with,
    # with its one reading.
    assert all(count == 1 for _, count in copies), [c for c in copies if c[1] != 1][:5]
    missing = [key for key in tally.acked if key not in stored]
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {missing[:5]}"
    wrong_id = [key for key, mid in tally.acked.items() if stored[key] != mid]
    assert not wrong_id, f"acknowledged ids differ from the journal, e.g. {wrong_id[:5]}"
    assert len(stored) == MESSAGES  # nothing unasked-for either
    assert all(readings[key] == 1 for key in tally.acked)
    assert all(seq_values[f"m-{n}"] == float(n) for n in range(MESSAGES))

    # ... and reached the webhook receiver at least once.
    undelivered = sorted(set(tally.acked.values()) - delivered)
    assert not undelivered, f"{len(undelivered)} never reached the receiver: {undelivered[:5]}"
    assert status[SINK]["lag_messages"] == 0 and status[SINK]["cursor"] == head


def test_sigkill_during_first_start_leaves_a_store_that_starts(tmp_path: Path) -> None:
    """A kill while the first start creates the schema must not leave half a schema behind."""
    for i, delay in enumerate(FIRST_START_KILL_DELAYS):
        with FieldbridgeProcess(tmp_path / f"start-{i}") as proc:
            proc.spawn()
            deadline = time.monotonic() + 20.0
            while not proc.db_path.exists():  # the migration is about to begin
                assert time.monotonic() < deadline, proc.log_tail()
                time.sleep(0.002)
            time.sleep(delay)
            proc.kill()
            proc.start()  # raises with the log if the store cannot be opened and migrated
            tables = {row[0] for row in proc.query("SELECT name FROM sqlite_master")}
            assert {"journal", "readings", "sink_state", "alembic_version"} <= tables
            proc.terminate()
            assert proc.wait(10.0) == 0
