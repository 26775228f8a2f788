"""The documented user paths work as written: the README's first steps and the online backup."""

from __future__ import annotations

import json
import re
import shlex
import sqlite3
import subprocess
from pathlib import Path

import httpx

from tests.support import paths
from tests.support.processes import FIELDBRIDGE, FieldbridgeProcess

README = paths.ROOT / "README.md"


def readme_curl(base_url: str) -> list[str]:
    """The curl command of the README's first steps, pointed at this test's service."""
    text = README.read_text()
    match = re.search(r"^curl .*?(?<!\\)\n", text, re.S | re.M)
    assert match, "README.md has no curl example"
    command = match.group(0).replace("\\\n", " ").replace("http://127.0.0.1:8080", base_url)
    return shlex.split(command)


def test_readme_first_steps(tmp_path: Path) -> None:
    with FieldbridgeProcess(tmp_path) as service:
        service.start()
        posted = subprocess.run(
            [*readme_curl(service.base_url), "--silent", "--show-error", "--fail"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert posted.returncode == 0, posted.stderr
        assert json.loads(posted.stdout) == {"ids": [1], "duplicates": 0}

        devices = json.loads(service.cli("devices", "list", "--json").stdout)
        assert [d["id"] for d in devices] == ["trap-7"]
        readings = json.loads(
            service.cli("readings", "list", "--device", "trap-7", "--json").stdout
        )
        assert [(r["quantity"], r["value"]) for r in readings] == [("temperature", 21.5)]


def test_online_sqlite_backup_while_serving(tmp_path: Path) -> None:
    """operations.md: `sqlite3 DB ".backup 'backup.db'"` is safe while fieldbridge runs."""
    backup = tmp_path / "backup.db"
    with FieldbridgeProcess(tmp_path / "live") as service:
        service.start()
        with httpx.Client(base_url=service.base_url, timeout=10) as client:
            for n in range(200):
                body = {"device": f"dev-{n % 5}", "readings": {"seq": n}, "id": f"m-{n}"}
                assert client.post("/api/v1/ingest", json=body).status_code == 200
            done = subprocess.run(
                ["sqlite3", str(service.db_path), f".backup '{backup}'"],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            # The service goes on serving after the backup.
            late = {"device": "dev-0", "readings": {"seq": 200}, "id": "m-200"}
            assert client.post("/api/v1/ingest", json=late).status_code == 200

    copy = sqlite3.connect(backup)
    try:
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        # Everything acknowledged before the backup is in it, including what sat in the WAL.
        assert copy.execute("SELECT COUNT(*) FROM journal").fetchone() == (200,)
        assert copy.execute("SELECT COUNT(*) FROM readings").fetchone() == (200,)
    finally:
        copy.close()

    # Restoring: a service started on the copy serves its data and hands out new ids after it.
    restored = FieldbridgeProcess(tmp_path / "restored")
    restored.db_path.write_bytes(backup.read_bytes())
    with restored:
        restored.start()
        answer = httpx.post(
            f"{restored.base_url}/api/v1/ingest",
            json={"device": "dev-9", "readings": {"seq": 1}, "id": "after-restore"},
            timeout=10,
        )
        assert answer.json() == {"ids": [201], "duplicates": 0}


def test_readme_settings_snippets_are_valid(tmp_path: Path) -> None:
    """Every TOML block of the README is a settings file `config check` accepts."""
    blocks = re.findall(r"^```toml\n(.*?)^```", README.read_text(), re.S | re.M)
    assert blocks, "README.md has no TOML example"
    for index, block in enumerate(blocks):
        path = tmp_path / f"readme-{index}.toml"
        path.write_text(block)
        checked = subprocess.run(
            [FIELDBRIDGE, "--config", str(path), "config", "check"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert checked.returncode == 0, f"README TOML block {index}: {checked.stderr}"
