"""Shared fixtures: a throwaway PostgreSQL database per run, and stores on both backends."""

from __future__ import annotations

import asyncio
import inspect
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import hypothesis  # noqa: F401  imported while only one thread runs (see below)
import psycopg
import pytest

from fieldbridge.store import Store, open_store, parse_store_url
from fieldbridge.store.migrate import upgrade

# Hypothesis' pytest plugin imports hypothesis lazily, at the end of a run that used none of it,
# when test threads may be alive; CPython 3.11's ast module (pytest rewrites hypothesis' modules)
# then fails with "AST constructor recursion depth mismatch". The import above avoids that.

T = TypeVar("T")
WAIT = 20.0  # seconds a wait gives its condition; only guards against a hang


def wait_until(check: Callable[[], T], what: str, timeout: float = WAIT, step: float = 0.05) -> T:
    """Poll `check` until it returns something true, and return that; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {what}")
        time.sleep(step)
    return result


async def eventually(
    check: Callable[[], T | Awaitable[T]],
    what: str,
    timeout: float = WAIT,  # noqa: ASYNC109  a deadline for the condition, not for one call
    step: float = 0.02,
) -> T:
    """`wait_until` for a test on the event loop; `check` may be a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {what}")
        await asyncio.sleep(step)


@pytest.fixture(autouse=True)
def _no_fieldbridge_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from what a test writes, never from the runner's FIELDBRIDGE_* variables."""
    for key in [k for k in os.environ if k.startswith("FIELDBRIDGE_")]:
        monkeypatch.delenv(key)


PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
TABLES = (
    "journal, readings, devices, sink_state, dead_letters, quarantine, downlinks, "
    "message_types, message_type_fields, node_gateways, device_transitions, device_subscribers, "
    "oauth_tokens, sink_skips, dunedb_actions, source_cursors, users, api_tokens, sessions, "
    "audit_log"
)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A uniquely named database on the machine's PostgreSQL, dropped after the run.

    A PostgreSQL that does not answer fails the run: CI must never skip the store suite.
    """
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required at {PG_ADMIN} and does not answer: {exc}")
    name = f"fieldbridge_test_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        url = f"postgresql://postgres@127.0.0.1:5432/{name}"
        upgrade(parse_store_url(url))
        yield url
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty store on each backend in turn."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
        upgrade(parse_store_url(url))
        return url
    url: str = request.getfixturevalue("pg_url")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY")
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    async with open_store(store_url) as opened:
        yield opened
