"""Credentials for tests of a running service: API tokens, users and browser logins."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from pathlib import Path

import httpx

from fieldbridge.store import Store
from fieldbridge.web.security.passwords import hash_password
from fieldbridge.web.security.tokens import mint_token
from tests.support.processes import FIELDBRIDGE, child_env

CLI_WAIT = 60.0  # seconds; a CLI start takes seconds on a loaded machine


def cli_token(config: Path, scope: str = "read") -> str:
    """A new API token, made with `fieldbridge tokens create` on the settings at `config`."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    done = subprocess.run(
        [
            FIELDBRIDGE,
            "--config",
            str(config),
            "tokens",
            "create",
            "--name",
            name,
            "--scope",
            scope,
            "--json",
        ],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=CLI_WAIT,
        check=True,
    )
    return str(json.loads(done.stdout)["token"])


async def store_token(store: Store, scope: str = "write", name: str | None = None) -> str:
    """A new API token kept straight in `store` (an in-process service's)."""
    plain, hashed = mint_token()
    assert await store.create_api_token(name or f"test-{uuid.uuid4().hex[:10]}", scope, hashed)
    return plain


async def store_user(store: Store, name: str, role: str, password: str) -> None:
    assert await store.add_user(name, role, hash_password(password))


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "no csrf_token field in the page"
    return found.group(1)


async def login(client: httpx.AsyncClient, name: str, password: str) -> str:
    """Log `client` in through /login as a browser does; returns the session's CSRF token."""
    form = await client.get("/login")
    assert form.status_code == 200
    answer = await client.post(
        "/login",
        data={"username": name, "password": password, "csrf_token": csrf_of(form.text)},
    )
    assert answer.status_code == 303, answer.text
    me = await client.get("/api/v1/session")
    assert me.status_code == 200, me.text
    return str(me.json()["csrf_token"])
