"""The commands that do what the REST API does beside the CLI's older ones: quarantine show,
reingest and drop, efento cancel, and the device search with paging."""

from __future__ import annotations

import time
from typing import Any

from fieldbridge.store import Pending, Store
from fieldbridge.store.jsoncol import dump
from tests.cli.test_cli import Workspace, workspace

__all__ = ["workspace"]  # the fixture: a seeded SQLite store with one quarantined payload

SERIAL = "282C024156AF"
FIXED = b'{"device": "late-1", "kind": "probe", "readings": {"temperature": 7.5}}'


async def _quarantine_fixed(store: Store) -> int:
    """A payload an older codec refused and today's decodes, quarantined as ingest does."""
    [outcome] = await store.commit(
        [Pending("http", time.time(), dump({}), FIXED, reason="codec error: KeyError")]
    )
    return int(outcome.quarantine_id)  # type: ignore[union-attr]


def test_quarantine_show_reingest_and_drop(workspace: Workspace) -> None:
    ws = workspace
    [held] = ws.json("quarantine", "list")
    shown = ws.json("quarantine", "show", str(held["id"]))
    assert shown["payload_hex"] == b"not json {".hex() and shown["size"] == 10
    assert shown["payload_text"] == "not json {" and shown["reason"] == "body is not valid JSON"
    table = ws.run("quarantine", "show", str(held["id"]))
    assert table.returncode == 0 and "6e6f74206a736f6e207b" in table.stdout
    assert "quarantine list" in ws.fails(1, "quarantine", "show", "99")
    assert ws.fails(2, "quarantine", "show", "0")

    refused = ws.fails(1, "quarantine", "reingest", str(held["id"]))
    assert "still refuses" in refused
    assert [q["id"] for q in ws.json("quarantine", "list")] == [held["id"]]

    fixed = ws.in_store(_quarantine_fixed)
    done: dict[str, Any] = ws.json("quarantine", "reingest", str(fixed))
    assert done["quarantine_id"] == fixed and done["source"] == "http"
    assert done["message_ids"] == [4] and done["duplicates"] == 0
    readings = ws.json("readings", "list", "--device", "late-1")
    assert [r["value"] for r in readings] == [7.5]
    assert [q["id"] for q in ws.json("quarantine", "list")] == [held["id"]]
    assert "not stored" in ws.fails(1, "quarantine", "reingest", str(fixed))

    assert ws.json("quarantine", "drop", str(held["id"])) == {"id": held["id"], "dropped": True}
    assert ws.json("quarantine", "list") == []
    assert "no quarantined payload" in ws.fails(1, "quarantine", "drop", str(held["id"]))


def test_efento_cancel(workspace: Workspace) -> None:
    ws = workspace
    queued = ws.json("efento", "config", SERIAL, "--set", "transmission_interval=900")
    other = ws.json("efento", "config", SERIAL, "--request", "device-info")
    cancelled = ws.json("efento", "cancel", str(queued["id"]))
    assert cancelled["id"] == queued["id"] and cancelled["state"] == "failed"
    assert cancelled["failed_reason"].startswith("cancelled by cli")
    assert [d["id"] for d in ws.json("efento", "pending")] == [other["id"]]
    assert "failed; nothing to cancel" in ws.fails(1, "efento", "cancel", str(queued["id"]))
    assert "efento pending --all" in ws.fails(1, "efento", "cancel", "999")
    done = ws.run("efento", "cancel", str(other["id"]))
    assert done.returncode == 0 and f"downlink {other['id']}" in done.stdout


def test_devices_are_searched_filtered_and_paged(workspace: Workspace) -> None:
    ws = workspace
    assert [d["id"] for d in ws.json("devices", "list", "--search", "DEV-2")] == ["dev-2"]
    assert [d["id"] for d in ws.json("devices", "list", "--source", "http")] == ["dev-1", "dev-2"]
    assert ws.json("devices", "list", "--status", "down") == []
    first = ws.json("devices", "list", "--limit", "1")
    rest = ws.json("devices", "list", "--after", first[-1]["id"])
    assert [d["id"] for d in first + rest] == ["dev-1", "dev-2"]
