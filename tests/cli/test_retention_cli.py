"""`fieldbridge db prune` and `fieldbridge sinks forget` against a real SQLite store."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from fieldbridge.model import Decoded, Reading
from fieldbridge.store import Pending, open_store, parse_store_url
from fieldbridge.store.migrate import upgrade
from tests.support.processes import FIELDBRIDGE, child_env

OLD = time.time() - 10 * 86400  # past the retention_days = 1 below
CLI_TIMEOUT = 60.0  # seconds; only guards against a hang


class Workspace:
    """Ten old messages; sink "gone" (cursor 5) is stored but no longer in the settings."""

    def __init__(self, tmp_path: Path) -> None:
        self.url = f"sqlite:///{tmp_path / 'fieldbridge.db'}"
        self.config = tmp_path / "fieldbridge.toml"
        self.config.write_text(
            f'[store]\nurl = "{self.url}"\nretention_days = 1\n\n'
            '[[sinks.webhook]]\nname = "hook"\nurl = "http://127.0.0.1:9/hook"\n'
        )
        upgrade(parse_store_url(self.url))
        self.store(self._seed)

    async def _seed(self, store: Any) -> None:
        batch = [
            Pending("http", OLD, "{}", b"{}", decoded=[Decoded("d", (Reading("t", 1.0, OLD),))])
            for _ in range(10)
        ]
        await store.commit(batch)
        await store.save_progress("hook", cursor=10, state="idle", last_error=None)
        await store.save_progress("gone", cursor=5, state="idle", last_error=None)
        await store.add_dead_letter("gone", 3, 404, "not found")

    def store(self, action: Any) -> Any:
        async def go() -> Any:
            async with open_store(self.url) as store:
                return await action(store)

        return asyncio.run(go())

    def journal_count(self) -> int:
        return len(self.store(lambda s: s.read_journal(0, 100)))

    def run(self, *args: str, answer: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [FIELDBRIDGE, "--config", str(self.config), *args],
            input=answer,
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=CLI_TIMEOUT,
            check=False,
        )


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


def test_db_prune_dry_run_shows_what_each_sink_holds_back(workspace: Workspace) -> None:
    done = workspace.run("db", "prune", "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["dry_run"] is True
    assert report["delivered_upto"] == 5
    assert report["tables"]["journal"]["removed"] == 4  # 1..5 less the dead letter (3)
    assert "readings" not in report["tables"]  # readings_retention_days = 0: kept forever
    assert report["sinks"] == [
        {"name": "gone", "in_settings": False, "enabled": False, "cursor": 5, "held_back": 5},
        {"name": "hook", "in_settings": True, "enabled": True, "cursor": 10, "held_back": 0},
    ]
    assert workspace.journal_count() == 10

    text = workspace.run("db", "prune", "--dry-run")
    assert text.returncode == 0, text.stderr
    assert "would remove" in text.stdout and "gone" in text.stdout
    assert workspace.journal_count() == 10


def test_sinks_forget_asks_then_lets_retention_go_on(workspace: Workspace) -> None:
    refused = workspace.run("sinks", "forget", "gone", answer="n\n")
    assert refused.returncode == 1
    assert "forget sink gone" in refused.stderr and "not forgotten" in refused.stderr
    assert refused.stdout == ""

    accepted = workspace.run("sinks", "forget", "gone", answer="y\n")
    assert accepted.returncode == 0, accepted.stderr
    assert "sink gone forgotten (1 dead letters dropped)" in accepted.stdout
    assert [s.name for s in workspace.store(lambda s: s.sink_states())] == ["hook"]

    done = workspace.run("db", "prune", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["dry_run"], report["tables"]["journal"]["removed"]) == (False, 10)
    assert workspace.journal_count() == 0


def test_sinks_forget_yes_json_and_refusals(workspace: Workspace) -> None:
    done = workspace.run("sinks", "forget", "gone", "--yes", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"name": "gone", "cursor": 5, "dead_letters_dropped": 1}

    configured = workspace.run("sinks", "forget", "hook", "--yes")
    assert configured.returncode == 1
    assert "still in the settings" in " ".join(configured.stderr.split())
    unknown = workspace.run("sinks", "forget", "gone", "--yes")
    assert unknown.returncode == 1
    assert "no stored state for a sink named 'gone' (stored sinks: hook)" in " ".join(
        unknown.stderr.split()
    )
