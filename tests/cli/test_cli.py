"""The `fieldbridge` console script: every command's output shape and exit codes."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from fieldbridge.cli import app as cli_app
from fieldbridge.model import Decoded, Reading
from fieldbridge.store import Pending, open_store, parse_store_url
from fieldbridge.store.migrate import upgrade
from fieldbridge.timefmt import iso
from tests.fakes.webhook import WebhookReceiver
from tests.support.processes import child_env
from tests.support.release import ROOT, package_version, schema_head
from tests.web.test_http_api import serve

FIELDBRIDGE = str(Path(sys.executable).with_name("fieldbridge"))
CLI_TIMEOUT = 60.0  # seconds; only guards against a hang
T0 = datetime(2024, 3, 1, tzinfo=UTC).timestamp()  # readings of the seeded store start here
SINKS = """
[[sinks.webhook]]
name = "hook"
url = "http://127.0.0.1:9/hook"

[[sinks.webhook]]
name = "audit"
url = "http://127.0.0.1:9/audit"
"""


@dataclass
class Workspace:
    """A settings file with two webhook sinks and the store it names."""

    config: Path
    store_url: str
    env: dict[str, str] = field(default_factory=dict)

    def run(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [FIELDBRIDGE, "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            env=child_env(self.env),
            timeout=timeout,
            check=False,
        )

    def json(self, *args: str) -> Any:
        done = self.run(*args, "--json")
        assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stderr}"
        return json.loads(done.stdout)

    def fails(self, code: int, *args: str) -> str:
        """Run a command that must exit with `code`; return its stderr."""
        done = self.run(*args)
        assert done.returncode == code, (
            f"{args}: exit {done.returncode}, expected {code}\n{done.stdout}\n{done.stderr}"
        )
        assert done.stdout.strip() == "" or code == 0
        return " ".join(done.stderr.split())  # unwrap whatever rich wrapped

    def in_store(self, query: Any) -> Any:
        async def go() -> Any:
            async with open_store(self.store_url) as store:
                return await query(store)

        return asyncio.run(go())


def write_config(tmp_path: Path, extra: str = SINKS) -> tuple[Path, str]:
    url = f"sqlite:///{tmp_path / 'fieldbridge.db'}"
    config = tmp_path / "fieldbridge.toml"
    config.write_text(f'[store]\nurl = "{url}"\n{extra}')
    return config, url


async def seed(url: str) -> None:
    """Three messages from two devices, one quarantined payload, dead letters, a sink cursor."""
    async with open_store(url) as store:
        await store.commit(
            [
                Pending(
                    "http",
                    T0 + 10,
                    "{}",
                    b"{}",
                    decoded=[
                        Decoded(
                            "dev-1",
                            (Reading("temperature", 21.5, T0), Reading("humidity", 60.0, T0)),
                            kind="probe",
                        )
                    ],
                ),
                Pending(
                    "http",
                    T0 + 70,
                    "{}",
                    b"{}",
                    decoded=[
                        Decoded(
                            "dev-1",
                            (Reading("temperature", 22.0, T0 + 60, channel=1, unit="C"),),
                            kind="probe",
                        )
                    ],
                ),
                Pending(
                    "http",
                    T0 + 130,
                    "{}",
                    b"{}",
                    decoded=[Decoded("dev-2", (Reading("count", 5.0, T0 + 120),), kind="gate")],
                ),
                Pending(
                    "http",
                    T0 + 140,
                    '{"remote": "192.0.2.1"}',
                    b"not json {",
                    reason="body is not valid JSON",
                    malformed=True,
                ),
            ]
        )
        await store.add_dead_letter("hook", 2, 400, "message 2 is unacceptable")
        await store.add_dead_letter("audit", 3, 422, "no such device")
        await store.save_progress("hook", cursor=1, state="idle", last_error=None)


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    """A migrated SQLite store, seeded, with settings naming it."""
    config, url = write_config(tmp_path)
    upgrade(parse_store_url(url))
    asyncio.run(seed(url))
    return Workspace(config, url)


def command_paths() -> list[list[str]]:
    def walk(command: Any, path: list[str]) -> Iterator[list[str]]:
        yield path
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, [*path, name])

    return list(walk(typer.main.get_command(cli_app), []))


# --- help and version -----------------------------------------------------------------------


def test_help_for_every_command() -> None:
    """Every command prints its help. In-process (the console script itself is run by
    test_version and the top-level help test): a Python start per command took minutes on a
    loaded machine once there were fifty commands."""
    paths = command_paths()
    assert ["sinks", "replay"] in paths and ["deadletters", "drop"] in paths
    runner = CliRunner()
    for path in paths:
        done = runner.invoke(cli_app, [*path, "--help"], env=child_env())
        assert done.exit_code == 0, f"{path}: {done.output}"
        assert "Usage:" in done.output, path
        assert len(done.output.strip().splitlines()) > 3, path


def test_version() -> None:
    done = subprocess.run(
        [FIELDBRIDGE, "--version"], capture_output=True, text=True, env=child_env(), timeout=60
    )
    assert done.returncode == 0
    assert done.stdout == f"fieldbridge {package_version()} (schema revision {schema_head()})\n"


def test_the_docs_show_the_real_top_level_help() -> None:
    doc = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    shown = doc.split("<code>fieldbridge --help</code></summary>\n\n```text\n")[1]
    done = subprocess.run(
        [FIELDBRIDGE, "--help"],
        capture_output=True,
        text=True,
        env=child_env({"COLUMNS": "100"}),  # the width docs/cli.md is rendered at
        timeout=60,
        check=True,
    )
    real = "\n".join(line.rstrip() for line in done.stdout.splitlines()).strip("\n")
    assert shown.split("```")[0].rstrip("\n") == real, "regenerate docs/cli.md's --help block"


# --- config ---------------------------------------------------------------------------------


def test_config_check(tmp_path: Path) -> None:
    config, _ = write_config(tmp_path)
    ws = Workspace(config, "")
    done = ws.run("config", "check")
    assert done.returncode == 0, done.stderr
    assert "settings are valid" in done.stdout
    assert ws.json("config", "check") == {
        "ok": True,
        "sources": ["http:http"],
        "sinks": ["webhook:hook", "webhook:audit"],
    }


def test_config_from_environment_variable(tmp_path: Path) -> None:
    config, _ = write_config(tmp_path)
    done = subprocess.run(
        [FIELDBRIDGE, "config", "check", "--json"],
        capture_output=True,
        text=True,
        env=child_env({"FIELDBRIDGE_CONFIG": str(config)}),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["sinks"] == ["webhook:hook", "webhook:audit"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param('[ingest]\nbatch_size = "x"\n', "ingest.batch_size", id="wrong-type"),
        pytest.param("[http]\nbogus = 1\n", "http.bogus", id="unknown-key"),
        pytest.param('[[sinks.nope]]\nname = "n"\n', "sinks.nope", id="unknown-sink-type"),
        pytest.param('[[sinks.webhook]]\nname = "n"\n', "sinks.webhook[0].url", id="no-url"),
        pytest.param("[store\n", "not valid TOML", id="bad-syntax"),
    ],
)
def test_config_check_bad_file_exits_2(tmp_path: Path, text: str, expected: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    stderr = Workspace(config, "").fails(2, "config", "check")
    assert expected in stderr
    assert str(config) in stderr


def test_missing_file_and_bad_environment_exit_2(tmp_path: Path) -> None:
    stderr = Workspace(tmp_path / "absent.toml", "").fails(2, "config", "check")
    assert "absent.toml" in stderr and "no such settings file" in stderr

    config, _ = write_config(tmp_path)
    ws = Workspace(config, "", env={"FIELDBRIDGE_INGEST__BATCH_SIZE": "lots"})
    assert "ingest.batch_size" in ws.fails(2, "config", "check")
    # The same refusal stops commands that would touch the store.
    assert "ingest.batch_size" in ws.fails(2, "devices", "list")


def test_config_show_masks_secrets(tmp_path: Path) -> None:
    config = tmp_path / "fieldbridge.toml"
    config.write_text(
        '[store]\nurl = "postgresql://fb:pg-secret@db.example:5432/fb"\n'
        '[http]\ntokens = ["ingest-token"]\n'
        '[[sinks.webhook]]\nname = "hook"\nurl = "http://127.0.0.1:9/hook"\n'
        '[sinks.webhook.headers]\nAuthorization = "Bearer hook-secret"\n'
        '[[sinks.trapnz]]\nname = "trapnz"\nclient_id = "c"\nclient_secret = "trap-secret"\n'
        'username = "u"\npassword = "trap-password"\n'
        "[dunedb.environments.development]\n"
        'auth0_domain = "a.example"\ndb_domain = "d.example"\nclient_id = "c"\n'
        'client_secret = "dune-secret"\n'
    )
    ws = Workspace(config, "", env={"FIELDBRIDGE_INGEST__BATCH_SIZE": "77"})
    shown = ws.json("config", "show")
    assert shown["store"]["url"] == "postgresql://fb:**********@db.example:5432/fb"
    assert shown["http"]["tokens"] == ["**********"]
    assert shown["sinks"]["webhook"][0]["headers"] == {"Authorization": "**********"}
    assert shown["ingest"]["batch_size"] == 77  # the environment beat the default
    assert shown["sinks"]["trapnz"][0]["password"] == "**********"
    assert shown["dunedb"]["environments"]["development"]["client_secret"] == "**********"
    assert set(shown) == {
        "store",
        "http",
        "ingest",
        "spy",
        "log",
        "dunedb",
        "control",
        "sources",
        "sinks",
    }
    text = ws.run("config", "show")
    assert text.returncode == 0
    assert "store.url" in text.stdout
    for output in (json.dumps(shown), text.stdout):
        for secret in ("pg-secret", "ingest-token", "hook-secret", "trap-", "dune-secret"):
            assert secret not in output


QUERY_SECRETS = ("pg-secret", "q-password", "ssl-secret", "key-secret", "tok-secret", "sec-secret")


def test_config_show_and_check_mask_secrets_in_query_parameters(tmp_path: Path) -> None:
    config = tmp_path / "fieldbridge.toml"
    config.write_text(
        '[store]\nurl = "postgresql://fb:pg-secret@db.example/fb?password=q-password'
        '&sslpassword=ssl-secret&sslmode=require"\n'
        '[[sinks.webhook]]\nname = "hook"\n'
        'url = "http://127.0.0.1:9/hook?api_key=key-secret&token=tok-secret&secret=sec-secret'
        '&tenant=north"\n'
    )
    ws = Workspace(config, "")
    shown = ws.json("config", "show")
    assert shown["store"]["url"] == (
        "postgresql://fb:**********@db.example/fb?password=**********"
        "&sslpassword=**********&sslmode=require"
    )
    assert shown["sinks"]["webhook"][0]["url"] == (
        "http://127.0.0.1:9/hook?api_key=**********&token=**********&secret=**********&tenant=north"
    )
    outputs = [json.dumps(shown), ws.run("config", "show").stdout]
    checked = ws.run("config", "check")
    assert checked.returncode == 0, checked.stderr
    assert "sslmode=require" in checked.stdout
    outputs.append(checked.stdout + checked.stderr)
    for output in outputs:
        for secret in QUERY_SECRETS:
            assert secret not in output


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("mysql://fb:pg-secret@db/fb?token=tok-secret", id="unsupported-scheme"),
        pytest.param("fb:pg-secret@db/fb?sslpassword=ssl-secret", id="no-scheme"),
    ],
)
def test_config_check_names_a_bad_store_url_without_its_secrets(tmp_path: Path, url: str) -> None:
    config = tmp_path / "fieldbridge.toml"
    config.write_text(f'[store]\nurl = "{url}"\n')
    stderr = Workspace(config, "").fails(2, "config", "check")
    assert "store.url" in stderr and "**********" in stderr
    for secret in QUERY_SECRETS:
        assert secret not in stderr


def test_a_bad_mqtt_url_is_named_without_its_secrets(tmp_path: Path) -> None:
    config = tmp_path / "fieldbridge.toml"
    config.write_text(
        '[[sources.mqtt]]\nname = "m"\nurl = "tcp://broker.example:1883/?token=tok-secret"\n'
    )
    stderr = Workspace(config, "").fails(2, "config", "check")
    assert "sources.mqtt[0].url" in stderr and "token=**********" in stderr
    assert "tok-secret" not in stderr


# --- db -------------------------------------------------------------------------------------


def test_db_migrate(tmp_path: Path) -> None:
    config, url = write_config(tmp_path, extra="")
    ws = Workspace(config, url)
    first = ws.json("db", "migrate")
    assert first["store"] == url
    assert isinstance(first["applied"], list) and first["applied"]
    assert all(isinstance(rev, str) for rev in first["applied"])
    assert ws.json("db", "migrate") == {"applied": [], "store": url}
    assert ws.json("devices", "list") == []


# --- what the store holds, on both backends ---------------------------------------------------


def test_store_reading_commands(tmp_path: Path, store_url: str) -> None:
    """The reading commands on SQLite and PostgreSQL, chosen by FIELDBRIDGE_STORE__URL."""
    asyncio.run(seed(store_url))
    config, _ = write_config(tmp_path)  # names another SQLite file: the environment must win
    ws = Workspace(config, store_url, env={"FIELDBRIDGE_STORE__URL": store_url})

    devices = ws.json("devices", "list")
    assert [d["id"] for d in devices] == ["dev-1", "dev-2"]
    first = devices[0]
    assert first["kind"] == "probe"
    assert first["last_seen"] == iso(T0 + 70)
    assert first["first_seen"] == iso(T0 + 10)
    assert first["message_count"] == 2
    assert first["source"] == "http"
    assert first["flags"] == {} and first["attributes"] == {}
    assert [d["id"] for d in ws.json("devices", "list", "--kind", "gate")] == ["dev-2"]
    # show adds who relayed the device, who is notified and its status changes (none here).
    relays = {"gateways": [], "repeaters": [], "relayed": [], "notify": [], "transitions": []}
    assert ws.json("devices", "show", "dev-1") == {**first, **relays}

    readings = ws.json("readings", "list", "--device", "dev-1")
    assert [
        (r["device"], r["measured_at"], r["quantity"], r["channel"], r["value"]) for r in readings
    ] == [
        ("dev-1", "2024-03-01T00:00:00Z", "temperature", 0, 21.5),
        ("dev-1", "2024-03-01T00:00:00Z", "humidity", 0, 60.0),
        ("dev-1", "2024-03-01T00:01:00Z", "temperature", 1, 22.0),
    ]
    assert readings[2]["unit"] == "C" and readings[2]["message_id"] == 2
    since = ws.json("readings", "list", "--device", "dev-1", "--since", "2024-03-01T00:00:30Z")
    assert [r["value"] for r in since] == [22.0]
    latest = ws.json("readings", "list", "--device", "dev-1", "--limit", "1")
    assert [r["value"] for r in latest] == [22.0]
    assert ws.json("readings", "list", "--device", "nobody") == []

    held = ws.json("quarantine", "list")
    assert len(held) == 1
    assert held[0]["source"] == "http"
    assert held[0]["reason"] == "body is not valid JSON"
    assert held[0]["payload_text"] == "not json {"
    assert held[0]["meta"] == {"remote": "192.0.2.1"}
    assert held[0]["received_at"] == iso(T0 + 140)

    status = {s["name"]: s for s in ws.json("sinks", "status")}
    assert list(status) == ["hook", "audit"]
    for row in status.values():
        assert {
            "name",
            "type",
            "state",
            "cursor",
            "lag_messages",
            "lag_seconds",
            "dead_letters",
            "last_error",
        } <= set(row)
        assert row["type"] == "webhook"
        assert row["dead_letters"] == 1
        assert row["lag_seconds"] > 0  # the oldest undelivered message is from 2024
    assert (status["hook"]["cursor"], status["hook"]["lag_messages"]) == (1, 2)
    assert (status["audit"]["cursor"], status["audit"]["lag_messages"]) == (0, 3)
    assert status["hook"]["state"] == "idle" and status["hook"]["last_error"] is None

    dead = ws.json("deadletters", "list")
    assert [(d["sink"], d["message_id"], d["status"], d["state"]) for d in dead] == [
        ("hook", 2, 400, "dead"),
        ("audit", 3, 422, "dead"),
    ]
    assert dead[0]["body"] == "message 2 is unacceptable" and dead[0]["attempts"] == 1
    assert [d["sink"] for d in ws.json("deadletters", "list", "--sink", "audit")] == ["audit"]

    stderr = ws.fails(1, "devices", "show", "dev-9")
    assert "dev-9" in stderr and "devices list" in stderr


# --- devices and readings -------------------------------------------------------------------


def test_ids_stored_by_an_older_version_print_escaped(workspace: Workspace) -> None:
    """An id with an ANSI escape or a bidi override (refused by codecs now, maybe stored before)
    shows as escapes in tables: it cannot colour, clear or reorder the terminal."""
    ws = workspace
    for raw in ("old\x1b[31m", "adm\u202eni", "[bold]x"):
        ws.in_store(lambda store, raw=raw: store.add_device(raw, kind="k", name=None))
    done = ws.run("devices", "list")
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout and "\u202e" not in done.stdout
    assert "old\\x1b[31m" in done.stdout and "adm\\u202eni" in done.stdout
    assert "[bold]x" in done.stdout  # rich markup in a value is shown, not applied
    shown = ws.run("devices", "show", "old\x1b[31m")
    assert shown.returncode == 0 and "\x1b" not in shown.stdout
    assert "old\\x1b[31m" in shown.stdout
    assert ws.json("devices", "show", "old\x1b[31m")["id"] == "old\x1b[31m"  # JSON is exact


def test_devices_add_refuses_an_unprintable_id(workspace: Workspace) -> None:
    stderr = workspace.fails(2, "devices", "add", "kit\x1b[2J")
    assert "ID 'kit\\x1b[2J' contains the control character U+001B at position 3" in stderr
    assert "\x1b" not in stderr


def test_devices_set(workspace: Workspace) -> None:
    ws = workspace
    updated = ws.json(
        "devices", "set", "dev-1", "--flag", "upload_trapnz=on", "--attr", "site=north"
    )
    assert updated["id"] == "dev-1"
    assert updated["flags"] == {"upload_trapnz": True}
    assert updated["attributes"] == {"site": "north"}

    again = ws.json("devices", "set", "dev-1", "--flag", "upload_trapnz=OFF", "--name", "Shed")
    assert again["flags"] == {"upload_trapnz": False}
    assert again["attributes"] == {"site": "north"}  # kept
    assert again["name"] == "Shed"
    assert ws.json("devices", "show", "dev-1") == again
    device = ws.in_store(lambda s: s.get_device("dev-1"))
    assert dict(device.flags) == {"upload_trapnz": False}

    assert "on or off" in ws.fails(2, "devices", "set", "dev-1", "--flag", "upload_trapnz=yes")
    assert "KEY=VALUE" in ws.fails(2, "devices", "set", "dev-1", "--attr", "site")
    assert "nothing to set" in ws.fails(2, "devices", "set", "dev-1")
    assert "dev-9" in ws.fails(1, "devices", "set", "dev-9", "--flag", "x=on")
    assert ws.json("devices", "show", "dev-1") == again  # refusals changed nothing


def test_devices_set_liveness_and_who_is_notified(workspace: Workspace) -> None:
    ws = workspace
    set_ = ws.json(
        "devices",
        "set",
        "dev-1",
        "--notify",
        "email:ranger@council.nz",
        "--notify",
        "sms:+64211234567",
        "--allowed-downtime",
        "90",
        "--status",
        "maintenance",
    )
    assert set_["notify"] == ["email:ranger@council.nz", "sms:+64211234567"]
    assert set_["status"] == "maintenance" and set_["allowed_downtime_min"] == 90
    [change] = set_["transitions"]
    assert (change["from"], change["to"], change["reason"]) == (
        "current",
        "maintenance",
        "set by an operator",
    )
    assert change["notified_at"] == change["at"]  # an operator's change: nobody is told

    # The monitor marks dev-2 down; its notification is owed until published.
    ws.in_store(lambda s: s.mark_silent_down(T0 + 3 * 3600))
    back = ws.json(
        "devices", "set", "dev-1", "--no-notify", "email:ranger@council.nz", "--status", "current"
    )
    assert back["notify"] == ["sms:+64211234567"] and back["status"] == "current"
    assert [(t["from"], t["to"]) for t in back["transitions"]] == [
        ("maintenance", "current"),
        ("current", "maintenance"),
    ]
    shown = ws.run("devices", "show", "dev-2")
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.split())
    assert "current -> down (no message since" in text and "notification owed" in text
    shown = ws.run("devices", "show", "dev-1")
    text = " ".join(shown.stdout.split())
    assert re.search(r"notify\s*│\s*sms:\+64211234567", shown.stdout), shown.stdout
    assert "maintenance -> current (set by an operator)" in text

    assert "set current or maintenance" in ws.fails(
        2, "devices", "set", "dev-1", "--status", "down"
    )
    assert "email:ADDRESS" in ws.fails(2, "devices", "set", "dev-1", "--notify", "pager:1")
    assert "has an @" in ws.fails(2, "devices", "set", "dev-1", "--notify", "email:ranger")
    assert "digits" in ws.fails(2, "devices", "set", "dev-1", "--notify", "sms:call-me")
    assert ws.json("devices", "show", "dev-1") == back  # refusals changed nothing


def test_readings_list_refusals(workspace: Workspace) -> None:
    stderr = workspace.fails(2, "readings", "list", "--device", "dev-1", "--since", "last week")
    assert "--since" in stderr and "ISO 8601" in stderr
    workspace.fails(2, "readings", "list")  # --device is required
    workspace.fails(2, "readings", "list", "--device", "dev-1", "--limit", "0")


# --- sinks ----------------------------------------------------------------------------------


def test_sinks_pause_and_resume(workspace: Workspace) -> None:
    ws = workspace

    def paused(name: str) -> bool:
        return bool(ws.in_store(lambda s: s.sink_state(name)).paused)

    assert ws.json("sinks", "pause", "hook") == {"name": "hook", "paused": True}
    assert paused("hook") and not paused("audit")
    status = {s["name"]: s["state"] for s in ws.json("sinks", "status")}
    assert status == {"hook": "paused", "audit": "idle"}
    assert ws.in_store(lambda s: s.sink_state("hook")).cursor == 1  # pausing keeps the place

    done = ws.run("sinks", "resume", "hook")
    assert done.returncode == 0 and "resumed" in done.stdout
    assert not paused("hook")

    for command in ("pause", "resume", "replay"):
        stderr = ws.fails(
            1, "sinks", command, "nosuch", *(["--from-id", "1"] * (command == "replay"))
        )
        assert "nosuch" in stderr and "hook, audit" in stderr


def test_sinks_replay_records_the_request(workspace: Workspace) -> None:
    ws = workspace

    def replay_from(name: str) -> int | None:
        state = ws.in_store(lambda s: s.sink_state(name))
        return None if state.replay_from is None else int(state.replay_from)

    result = ws.json("sinks", "replay", "hook", "--from-id", "2", "--no-wait")
    assert result == {
        "name": "hook",
        "from_id": 2,
        "head_id": 3,
        "messages": 2,
        "caught_up": None,
    }
    assert replay_from("hook") == 1  # deliver everything after message 1 again

    # Message 2 was received at T0+70, message 3 at T0+130.
    since = ws.json("sinks", "replay", "audit", "--since", iso(T0 + 60), "--no-wait")
    assert (since["from_id"], since["messages"]) == (2, 2)
    assert replay_from("audit") == 1
    late = ws.json("sinks", "replay", "audit", "--since", "2099-01-01T00:00:00Z", "--no-wait")
    assert (late["from_id"], late["messages"]) == (4, 0)
    assert replay_from("audit") == 3

    assert "exactly one" in ws.fails(2, "sinks", "replay", "hook")
    both = ws.fails(2, "sinks", "replay", "hook", "--from-id", "1", "--since", iso(T0))
    assert "exactly one" in both
    assert "ISO 8601" in ws.fails(2, "sinks", "replay", "hook", "--since", "soon")
    ws.fails(2, "sinks", "replay", "hook", "--from-id", "0")
    assert replay_from("hook") == 1  # refusals changed nothing


def test_deadletters_retry_and_drop(workspace: Workspace) -> None:
    ws = workspace
    for command in ("retry", "drop"):
        stderr = ws.fails(2, "deadletters", command)
        assert "--sink" in stderr and "--id" in stderr and "--all" in stderr

    dead = ws.json("deadletters", "list")
    hook_id, audit_id = (d["id"] for d in dead)
    assert ws.json("deadletters", "retry", "--id", str(hook_id)) == {"retrying": 1}
    states = {d["id"]: d["state"] for d in ws.json("deadletters", "list")}
    assert states == {hook_id: "retry", audit_id: "dead"}
    assert ws.json("deadletters", "retry", "--sink", "audit") == {"retrying": 1}
    assert ws.json("deadletters", "retry", "--all") == {"retrying": 2}

    assert ws.json("deadletters", "drop", "--sink", "hook") == {"dropped": 1}
    assert [d["id"] for d in ws.json("deadletters", "list")] == [audit_id]
    assert ws.json("deadletters", "drop", "--id", "999") == {"dropped": 0}
    done = ws.run("deadletters", "drop", "--all")
    assert done.returncode == 0 and "1 dead letters dropped" in done.stdout
    assert ws.json("deadletters", "list") == []
    assert ws.in_store(lambda s: s.count_dead_letters("audit")) == 0


# --- replay --wait against a running service ----------------------------------------------------


async def run_cli(config: Path, *args: str) -> tuple[int, str, str]:
    """Run one command without blocking the loop the in-process service runs on."""
    process = await asyncio.create_subprocess_exec(
        FIELDBRIDGE,
        "--config",
        str(config),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=child_env(),
    )
    try:
        async with asyncio.timeout(CLI_TIMEOUT):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_replay_wait_returns_once_the_service_caught_up(tmp_path: Path) -> None:
    async with WebhookReceiver() as hook:
        sinks = {"webhook": [{"name": "hook", "url": hook.url}]}
        async with serve(tmp_path, sinks=sinks) as fb:
            body = [{"device": "d", "readings": {"t": n}} for n in range(4)]
            assert (await fb.post(body)).json()["ids"] == [1, 2, 3, 4]
            await hook.wait_for(lambda: sorted(hook.received_ids) == [1, 2, 3, 4])
            config = tmp_path / "fieldbridge.toml"  # the file the service runs on

            code, out, err = await run_cli(
                config, "sinks", "replay", "hook", "--from-id", "2", "--wait", "--json"
            )
            assert code == 0, err
            result = json.loads(out)  # stdout holds the JSON alone; the bar went to stderr
            assert "replay hook" in err and "3/3" in err
            assert result == {
                "name": "hook",
                "from_id": 2,
                "head_id": 4,
                "messages": 3,
                "caught_up": True,
            }
            # Messages 2 to 4 went out a second time; 1 did not.
            assert sorted(hook.received_ids) == [1, 2, 2, 3, 3, 4, 4]
            state = await fb.store.sink_state("hook")
            assert (state.cursor, state.replay_from) == (4, None)
            assert hook.violations == []

            code, out, err = await run_cli(config, "sinks", "status", "--json")
            assert code == 0, err
            [row] = json.loads(out)
            assert (row["cursor"], row["lag_messages"], row["dead_letters"]) == (4, 0, 0)
