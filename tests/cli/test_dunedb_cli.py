"""`fieldbridge dunedb ...` and examples/dunedb/ against the fake DUNE DB: the seed's four tasks."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fieldbridge.clients import short_uuid
from tests.fakes.dunedb import DuneDBServer
from tests.support import paths
from tests.support.processes import child_env, run_cli

EXAMPLES = paths.ROOT / "examples" / "dunedb"


@pytest.fixture
async def dune() -> AsyncIterator[DuneDBServer]:
    async with DuneDBServer() as server:
        yield server
    assert server.violations == [], "the CLI broke the DUNE DB contract"


@pytest.fixture
async def viewer() -> AsyncIterator[DuneDBServer]:
    """A DB whose client may look but not act."""
    async with DuneDBServer(permissions=("components:view", "actions:view")) as server:
        yield server


def settings_file(tmp_path: Path, **environments: DuneDBServer) -> Path:
    lines = [f'[store]\nurl = "sqlite:///{tmp_path / "store.db"}"\n']
    for name, server in environments.items():
        lines.append(
            f"[dunedb.environments.{name}]\n"
            f'auth0_domain = "{server.url}"\n'
            f'db_domain = "{server.url}"\n'
            f'client_id = "{server.client_id}"\n'
            f'client_secret = "{server.client_secret}"\n'
            "timeout = 5.0\n"
        )
    path = tmp_path / "fieldbridge.toml"
    path.write_text("\n".join(lines))
    return path


async def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_cli, *args, config=config)


async def ok(config: Path, *args: str) -> str:
    done = await cli(config, *args)
    assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stderr}"
    return done.stdout


async def ok_json(config: Path, *args: str) -> Any:
    return json.loads(await ok(config, *args, "--json"))


async def refused(config: Path, code: int, *args: str) -> str:
    done = await cli(config, *args)
    assert done.returncode == code, f"{args}: exit {done.returncode}\n{done.stdout}{done.stderr}"
    assert done.stdout == ""
    return " ".join(done.stderr.split())


async def test_the_seed_tasks_through_every_command(tmp_path: Path, dune: DuneDBServer) -> None:
    config = settings_file(tmp_path, development=dune)
    # Create (template_createComponent.py).
    printed = await ok(
        config,
        "dunedb",
        "component",
        "create",
        "--form",
        "basic_component",
        "--data",
        '{"name": "New M2M Component"}',
        "--field",
        "textField=This is a component created through the M2M application",
    )
    component = uuid.UUID(printed.strip())
    record = await ok_json(config, "dunedb", "component", "get", str(component))
    assert record["componentUuid"] == str(component) and record["formId"] == "basic_component"
    assert record["data"] == {
        "name": "New M2M Component",
        "textField": "This is a component created through the M2M application",
        "submit": True,
    }
    short = record["shortUuid"]
    assert short == short_uuid.encode(component)
    # convert-uuid, --env before the command.
    assert (await ok(config, "dunedb", "--env", "development", "convert-uuid", short)).strip() == (
        str(component)
    )
    assert await ok_json(config, "dunedb", "convert-uuid", short) == {
        "short_uuid": short,
        "component_uuid": str(component),
    }
    # Edit (template_editComponent.py), by its short UUID, --env after the command.
    shown = await ok_json(
        config,
        "dunedb",
        "component",
        "edit",
        short,
        "--field",
        "textField=This component has been edited through the M2M application",
        "--env",
        "development",
    )
    assert shown == {"component_uuid": str(component), "short_uuid": short}
    edited = dune.component(str(component))
    assert edited is not None and edited["validity"]["version"] == 2
    assert edited["data"]["textField"].endswith("edited through the M2M application")
    assert edited["data"]["name"] == "New M2M Component"
    # Perform (template_performAction.py); --field values are JSON when they are JSON.
    action_id = (
        await ok(
            config,
            "dunedb",
            "action",
            "perform",
            "--form",
            "my_action",
            "--component",
            str(component),
            "--data",
            '{"name": "M2M Action"}',
            "--field",
            "actionPerformedAfterFormsCleanup=true",
            "--field",
            "measurement=12.04",
        )
    ).strip()
    action = await ok_json(config, "dunedb", "action", "get", action_id)
    assert action["data"] == {
        "name": "M2M Action",
        "actionPerformedAfterFormsCleanup": True,
        "measurement": 12.04,
        "submit": True,
    }
    assert action["componentUuid"] == str(component)
    # Edit (template_editAction.py).
    assert await ok_json(
        config,
        "dunedb",
        "action",
        "edit",
        action_id,
        "--field",
        "actionName=M2M Action (edited)",
        "--field",
        "measurement=19.07",
    ) == {"action_id": action_id}
    newest = await ok_json(config, "dunedb", "action", "get", action_id)
    assert newest["validity"]["version"] == 2 and newest["data"]["measurement"] == 19.07
    assert newest["data"]["actionName"] == "M2M Action (edited)"
    # Text output: a table of the record.
    text = await ok(config, "dunedb", "component", "get", short)
    assert str(component) in text and "textField" in text and "Basic Component" in text
    text = await ok(config, "dunedb", "action", "get", action_id)
    assert "19.07" in text and "My Action" in text


async def test_errors_exit_non_zero_with_the_servers_message(
    tmp_path: Path, dune: DuneDBServer, viewer: DuneDBServer
) -> None:
    config = settings_file(tmp_path, development=dune, staging=viewer)
    component = uuid.uuid4()
    viewer.add_component(component)
    said = await refused(
        config,
        1,
        "dunedb",
        "--env",
        "staging",
        "action",
        "perform",
        "--form",
        "my_action",
        "--component",
        str(component),
        "--field",
        "measurement=1",
    )
    assert (
        "Incorrect permissions - you need actions:perform, but have components:view, "
        "actions:view" in said
    )
    said = await refused(config, 1, "dunedb", "component", "get", str(uuid.uuid4()))
    assert "no component" in said
    said = await refused(
        config, 1, "dunedb", "component", "create", "--form", "nope", "--field", "name=x"
    )
    assert "Error: Component::save() - unknown component type form ID nope" in said
    said = await refused(config, 2, "dunedb", "action", "get", "not-an-id")
    assert "24 lower-case hex" in said
    said = await refused(config, 2, "dunedb", "--env", "production", "convert-uuid", "x" * 22)
    assert "dunedb.environments.production" in said and "known: development, staging" in said
    said = await refused(config, 2, "dunedb", "component", "edit", str(component))
    assert "--data JSON or --field NAME=VALUE" in said
    said = await refused(config, 2, "dunedb", "component", "edit", str(component), "--data", "[1]")
    assert "--data must be a JSON object" in said


async def test_the_example_scripts_do_the_seed_tasks(tmp_path: Path, dune: DuneDBServer) -> None:
    config = settings_file(tmp_path, development=dune)

    def example(name: str, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, str(EXAMPLES / name), *args],
            capture_output=True,
            text=True,
            env=child_env({"FIELDBRIDGE_CONFIG": str(config)}),
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, f"{name}: {done.stderr}"
        return done.stdout.strip()

    said = await asyncio.to_thread(example, "create_component.py")
    assert said.startswith("Successfully submitted component with UUID: ")
    component = said.rsplit(" ", 1)[1]
    said = await asyncio.to_thread(example, "edit_component.py", component)
    assert said == f"Successfully edited component with UUID: {component}"
    said = await asyncio.to_thread(
        example, "perform_action.py", short_uuid.encode(uuid.UUID(component))
    )
    assert said.startswith("Successfully performed action with ID: ")
    action_id = said.rsplit(" ", 1)[1]
    said = await asyncio.to_thread(example, "edit_action.py", action_id, "--env", "development")
    assert said == f"Successfully edited action with ID: {action_id}"
    record = dune.action(action_id)
    assert record is not None and record["validity"]["version"] == 2
    assert record["data"]["measurement"] == 19.07 and record["data"]["name"] == "M2M Action"
    assert dune.component(component)["data"]["textField"].endswith("M2M application")  # type: ignore[index]


async def test_an_example_names_a_missing_environment(tmp_path: Path) -> None:
    config = settings_file(tmp_path)
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(EXAMPLES / "create_component.py"), "--config", str(config)],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 1 and "dunedb.environments.development" in done.stderr
