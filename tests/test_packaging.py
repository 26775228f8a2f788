"""The wheel as operators install it: built from this tree, alone in a fresh venv, it works.

Builds the wheel once per module (pip, with hatchling from the package index), installs it
with its dependencies into a new venv, and runs that venv's `fieldbridge` from a temporary
directory with no PYTHONPATH, so nothing can come from the source tree. Takes about a minute.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic.script import ScriptDirectory

from tests.support.mqtt_broker import Mosquitto
from tests.support.processes import FieldbridgeProcess
from tests.support.release import BUILD_INPUTS, MIGRATIONS, ROOT, package_version, schema_head
from tests.support.smartcitizen_sim import Kit

# The wheel and its venv are built once and shared by this module's tests; with pytest-xdist,
# --dist loadgroup keeps them on one worker. The first test's timeout includes that build.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("wheel"), pytest.mark.timeout(900)]

PACKAGE = ROOT / "src" / "fieldbridge"
BUILD_TIMEOUT = 600.0  # seconds for building or installing; only guards against a hang
RUN_TIMEOUT = 60.0  # seconds for one command of the installed package
WAIT = 20.0  # seconds for the service to store what a kit sent
ALL_VECTORS: list[dict[str, Any]] = json.loads(
    (ROOT / "tests" / "fixtures" / "efento" / "vectors.json").read_text(encoding="utf-8")
)
# One frame per endpoint: each needs other generated modules; test_efento_cli tries them all.
VECTORS = [next(v for v in ALL_VECTORS if v["endpoint"] == e) for e in ("/m", "/i")]
CATALOGUE: dict[str, dict[str, Any]] = json.loads(
    (PACKAGE / "codecs" / "smartcitizen" / "sensors.json").read_text(encoding="utf-8")
)["sensors"]


@dataclass(frozen=True)
class Installed:
    """A venv holding the built wheel and its dependencies, nothing else."""

    wheel: Path
    venv: Path
    workdir: Path  # where its commands run: outside the source tree

    @property
    def fieldbridge(self) -> str:
        return str(self.venv / "bin" / "fieldbridge")

    def run(
        self, *args: str, env: Mapping[str, str] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [self.fieldbridge, *args],
            capture_output=True,
            text=True,
            cwd=self.workdir,
            env=outside_env(env),
            timeout=RUN_TIMEOUT,
            check=False,
        )
        if check:
            assert done.returncode == 0, f"fieldbridge {' '.join(args)}: {done.stderr}"
        return done


def outside_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The runner's environment without what would point Python or fieldbridge elsewhere."""
    dropped = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSAFEPATH")
    env = {
        k: v for k, v in os.environ.items() if k not in dropped and not k.startswith("FIELDBRIDGE_")
    }
    env["COLUMNS"] = "200"  # rich wraps at 80 columns when not on a terminal
    env.update(extra or {})
    return env


def build(*command: str, cwd: Path) -> None:
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=outside_env(),
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("wheel")
    # Built from a copy of what the Docker build stage copies, so that list is proven enough.
    source = work / "source"
    source.mkdir()
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(ROOT / name, source / name, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, source / name)
    dist = work / "dist"
    build(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--wheel-dir",
        str(dist),
        str(source),
        cwd=work,
    )
    [wheel] = dist.glob("fieldbridge-*.whl")
    venv = work / "venv"
    build(sys.executable, "-m", "venv", str(venv), cwd=work)
    # The dependency versions this suite runs with, so the wheel is tried on what was tested.
    constraints = work / "constraints.txt"
    frozen = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
        capture_output=True,
        text=True,
        check=True,
        timeout=RUN_TIMEOUT,
    ).stdout
    constraints.write_text(frozen)
    build(
        str(venv / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "-q",
        "-c",
        str(constraints),
        str(wheel),
        cwd=work,
    )
    outside = work / "outside"
    outside.mkdir()
    return Installed(wheel, venv, outside)


# --- what the wheel holds ---------------------------------------------------------------------


def test_the_wheel_holds_every_file_of_the_package(installed: Installed) -> None:
    """Data files (catalogue, migrations, .proto) are loaded at run time: all must ship."""
    in_tree = {
        path.relative_to(PACKAGE.parent).as_posix()
        for path in PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    with zipfile.ZipFile(installed.wheel) as wheel:
        shipped = {name for name in wheel.namelist() if name.startswith("fieldbridge/")}
    assert shipped == in_tree
    assert "fieldbridge/codecs/smartcitizen/sensors.json" in shipped
    assert "fieldbridge/store/migrations/script.py.mako" in shipped
    assert "fieldbridge/codecs/efento/proto/measurements_pb2.py" in shipped


def test_the_venv_imports_the_installed_package(installed: Installed) -> None:
    done = subprocess.run(
        [
            str(installed.venv / "bin" / "python"),
            "-c",
            "import fieldbridge; print(fieldbridge.__file__)",
        ],
        capture_output=True,
        text=True,
        cwd=installed.workdir,
        env=outside_env(),
        timeout=RUN_TIMEOUT,
        check=True,
    )
    origin = Path(done.stdout.strip())
    assert origin.is_relative_to(installed.venv / "lib"), origin
    assert "site-packages" in origin.parts


# --- what its console script does -------------------------------------------------------------


def test_version(installed: Installed) -> None:
    done = installed.run("--version")
    assert done.stdout == f"fieldbridge {package_version()} (schema revision {schema_head()})\n"


def test_db_migrate_applies_every_shipped_revision(installed: Installed, tmp_path: Path) -> None:
    db = tmp_path / "state" / "fieldbridge.db"
    env = {"FIELDBRIDGE_STORE__URL": f"sqlite:///{db}"}  # four slashes: an absolute path
    chain = [s.revision for s in ScriptDirectory(str(MIGRATIONS)).walk_revisions()]
    done = installed.run("db", "migrate", "--json", env=env)
    assert json.loads(done.stdout) == {"applied": chain[::-1], "store": f"sqlite:///{db}"}
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [
            (schema_head(),)
        ]
        assert conn.execute("SELECT COUNT(*) FROM journal").fetchone() == (0,)
    again = installed.run("db", "migrate", env=env)
    assert again.stdout == "schema is up to date\n"


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_decode_efento_uses_the_shipped_protobuf_modules(
    installed: Installed, vector: dict[str, Any]
) -> None:
    done = installed.run(
        "decode", "efento", "--endpoint", vector["endpoint"], "--hex", vector["hex"]
    )
    assert json.loads(done.stdout) == vector["expected"]


# --- the service it runs ----------------------------------------------------------------------


@pytest.fixture
def service(installed: Installed, tmp_path: Path) -> Iterator[tuple[FieldbridgeProcess, int]]:
    """The installed `fieldbridge run` on a Smart Citizen MQTT source, with its own broker."""
    with Mosquitto(tmp_path / "broker") as broker:
        source = {
            "name": "kits",
            "url": broker.url,
            "client_id": "fieldbridge-wheel",
            "topics": ["device/sck/+/readings"],
            "qos": 1,
            "codec": "smartcitizen",
        }
        with FieldbridgeProcess(
            tmp_path / "svc", sources={"mqtt": [source]}, fieldbridge=installed.fieldbridge
        ) as process:
            process.start()
            deadline = time.monotonic() + WAIT
            # The source logs its SUBACK; publishing before it would find no subscriber.
            while "; subscribed to" not in process.output():
                assert time.monotonic() < deadline, f"not subscribed:\n{process.log_tail()}"
                time.sleep(0.05)
            yield process, broker.port


def test_the_service_names_smart_citizen_readings_from_the_shipped_catalogue(
    service: tuple[FieldbridgeProcess, int],
) -> None:
    process, port = service
    with Kit("wheelkit", "127.0.0.1", port, seed=3) as kit:
        kit.readings([time.time() - 60])  # one item: one reading per sensor
        sent = len(kit.sensors)
        expected = {
            (CATALOGUE[str(sid)]["name"], CATALOGUE[str(sid)].get("unit")) for sid in kit.sensors
        }
    deadline = time.monotonic() + WAIT
    while True:
        done = process.cli("readings", "list", "--device", "wheelkit", "--json", "--limit", "1000")
        assert done.returncode == 0, done.stderr
        rows = json.loads(done.stdout)
        if len(rows) >= sent:
            break
        assert time.monotonic() < deadline, f"{len(rows)} readings stored:\n{process.log_tail()}"
        time.sleep(0.1)
    assert len(rows) == sent
    assert {(r["quantity"], r["unit"]) for r in rows} == expected


def test_the_service_reports_its_version_and_schema_on_healthz(
    service: tuple[FieldbridgeProcess, int],
) -> None:
    process, _ = service
    health = httpx.get(f"{process.base_url}/healthz", timeout=5.0).json()
    assert health["status"] == "ok"
    assert health["version"] == package_version()
    assert health["schema"] == {"revision": schema_head(), "head": schema_head()}
