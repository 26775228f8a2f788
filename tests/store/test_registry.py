"""Devices registered ahead (`devices add`) and codecs that accept only those, on both stores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fieldbridge.codecs.smartcitizen import build
from fieldbridge.ingest import Ingest
from fieldbridge.model import Accepted, Decoded, Reading, Rejected
from fieldbridge.observe import Metrics
from fieldbridge.store import Pending, Store
from tests.support.processes import run_cli, to_toml

T0 = 1_800_000_000.0
RAW = b"{t:2027-01-15T08:00:00Z,10:95,55:21.5}"
KITS = build({"registered_only": True, "tokens": ["abc123", "def456"]})


def topic(token: str, what: str = "readings/raw") -> dict[str, str]:
    return {"topic": f"device/sck/{token}/{what}"}


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def count(store: Store, table: str) -> int:
    rows = await store.db.fetchall(f"SELECT COUNT(*) FROM {table}")
    return int(rows[0][0])


async def test_an_unregistered_kit_is_quarantined_with_the_command_to_add_it(store: Store) -> None:
    metrics = Metrics()
    async with Ingest(store, metrics=metrics) as ingest:
        outcome = await ingest.submit("kits", RAW, KITS, topic("abc123"), T0)
    assert isinstance(outcome, Rejected)
    assert outcome.reason == (
        "device abc123 is not registered; add it with `fieldbridge devices add abc123`"
    )
    assert outcome.cause == "unregistered_device"
    [kept] = await store.list_quarantine()
    assert (kept.payload, kept.reason, kept.meta) == (RAW, outcome.reason, topic("abc123"))
    assert {t: await count(store, t) for t in ("journal", "readings", "devices")} == {
        "journal": 0,
        "readings": 0,
        "devices": 0,
    }
    assert (
        sample(
            metrics,
            "fieldbridge_rejected_payloads_total",
            source="kits",
            cause="unregistered_device",
        )
        == 1
    )


async def test_a_registered_kit_is_accepted_and_takes_its_first_message_source_and_time(
    store: Store,
) -> None:
    added = await store.add_device(
        "abc123", name="Roof kit", attributes={"site": "roof"}, at=T0 - 100
    )
    assert added is not None
    assert (added.source, added.message_count, added.first_seen, added.kind) == (
        "registry",
        0,
        T0 - 100,
        None,
    )
    async with Ingest(store) as ingest:
        outcome = await ingest.submit("kits", RAW, KITS, topic("abc123"), T0)
        again = await ingest.submit("kits", RAW, KITS, topic("abc123"), T0 + 5)  # a redelivery
    assert isinstance(outcome, Accepted) and outcome.duplicates == 0
    assert isinstance(again, Accepted) and again.duplicates == 1 and again.ids == outcome.ids
    device = await store.get_device("abc123")
    assert device is not None
    assert (device.source, device.kind, device.name, device.message_count) == (
        "kits",
        "smartcitizen",
        "Roof kit",
        1,
    )
    assert (device.first_seen, device.last_seen) == (T0, T0)
    assert device.attributes == {"site": "roof"}
    stored = await store.list_readings("abc123")
    assert [(r.reading.quantity, r.reading.value) for r in stored] == [
        ("battery", 95.0),
        ("temperature", 21.5),
    ]


async def test_a_second_message_keeps_the_first_source(store: Store) -> None:
    await store.add_device("abc123", at=T0 - 100)
    async with Ingest(store) as ingest:
        await ingest.submit("kits", b"hi", KITS, topic("abc123", "hello"), T0)
        await ingest.submit("other", b"hi", KITS, topic("abc123", "hello"), T0 + 1)
    device = await store.get_device("abc123")
    assert device is not None
    assert (device.source, device.first_seen, device.last_seen, device.message_count) == (
        "kits",
        T0,
        T0 + 1,
        2,
    )


async def test_one_batch_mixes_registered_unregistered_and_unchecked_messages(store: Store) -> None:
    await store.add_device("abc123")
    reading = (Reading("t", 1.0, T0),)
    batch = [
        Pending(
            "kits", T0, "{}", b"1", decoded=[Decoded("abc123", reading, require_registered=True)]
        ),
        Pending(
            "kits", T0, "{}", b"2", decoded=[Decoded("def456", reading, require_registered=True)]
        ),
        Pending("http", T0, "{}", b"3", decoded=[Decoded("free-1", reading)]),
        Pending("http", T0, "{}", b"4", reason="not JSON"),
        # One message of a payload needs an unregistered device: the whole payload is refused.
        Pending(
            "kits",
            T0,
            "{}",
            b"5",
            decoded=[
                Decoded("abc123", reading, require_registered=True),
                Decoded("ghost", reading, require_registered=True),
            ],
        ),
    ]
    outcomes = await store.commit(batch)
    assert [type(o).__name__ for o in outcomes] == [
        "Accepted",
        "Rejected",
        "Accepted",
        "Rejected",
        "Rejected",
    ]
    assert (
        isinstance(outcomes[1], Rejected)
        and "device def456 is not registered" in outcomes[1].reason
    )
    assert (
        isinstance(outcomes[4], Rejected) and "device ghost is not registered" in outcomes[4].reason
    )
    assert isinstance(outcomes[3], Rejected) and outcomes[3].cause is None
    assert await count(store, "journal") == 2
    assert sorted(d.id for d in await store.list_devices()) == ["abc123", "free-1"]


async def test_registering_twice_is_refused(store: Store) -> None:
    assert await store.add_device("abc123", kind="smartcitizen") is not None
    assert await store.add_device("abc123", kind="other") is None
    device = await store.get_device("abc123")
    assert device is not None and device.kind == "smartcitizen"


async def test_unknown_tokens_are_counted(store: Store) -> None:
    metrics = Metrics()
    async with Ingest(store, metrics=metrics) as ingest:
        for _ in range(3):
            outcome = await ingest.submit("kits", RAW, KITS, topic("zzz999"), T0)
            assert isinstance(outcome, Rejected) and outcome.cause == "unknown_token"
        bad = await ingest.submit("kits", b"{", KITS, topic("abc123", "info"), T0)
        assert isinstance(bad, Rejected) and bad.cause is None
    assert (
        sample(metrics, "fieldbridge_rejected_payloads_total", source="kits", cause="unknown_token")
        == 3
    )
    assert (
        sample(metrics, "fieldbridge_rejected_payloads_total", source="kits", cause="invalid") == 1
    )
    assert await count(store, "quarantine") == 4


# --- fieldbridge devices add ------------------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "fieldbridge.toml"
    path.write_text(to_toml({"store": {"url": f"sqlite:///{tmp_path / 'store.db'}"}}))
    return path


def test_devices_add_registers_and_prints_the_device(config: Path) -> None:
    done = run_cli(
        "devices", "add", "abc123", "--kind", "smartcitizen", "--name", "Roof kit",
        "--attr", "site=roof", "--attr", "floor=3", "--json", config=config,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert {k: shown[k] for k in ("id", "kind", "name", "source", "message_count")} == {
        "id": "abc123",
        "kind": "smartcitizen",
        "name": "Roof kit",
        "source": "registry",
        "message_count": 0,
    }
    assert shown["attributes"] == {"site": "roof", "floor": "3"}
    listed = json.loads(run_cli("devices", "list", "--json", config=config).stdout)
    assert [d["id"] for d in listed] == ["abc123"]


def test_devices_add_twice_or_with_bad_input_says_what_to_do(config: Path) -> None:
    assert run_cli("devices", "add", "abc123", config=config).returncode == 0
    again = run_cli("devices", "add", "abc123", config=config)
    assert again.returncode == 1
    assert "already registered; change it with `fieldbridge devices set`" in again.stderr
    bad = run_cli("devices", "add", "x1", "--attr", "novalue", config=config)
    assert bad.returncode == 2
    assert "--attr 'novalue': write KEY=VALUE" in bad.stderr
    table = run_cli("devices", "add", "x2", config=config)
    assert table.returncode == 0 and "x2" in table.stdout
