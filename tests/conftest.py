"""Shared fixtures: a throwaway PostgreSQL database per run, and stores on both backends."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import hypothesis  # noqa: F401  imported while only one thread runs (see below)
import psycopg
import pytest

from fieldbridge.store import Store, open_store, parse_store_url
from fieldbridge.store.migrate import upgrade

# Hypothesis' pytest plugin imports hypothesis lazily, at the end of a run that used none of it,
# when test threads may be alive; CPython 3.11's ast module (pytest rewrites hypothesis' modules)
# then fails with "AST constructor recursion depth mismatch". The import above avoids that.

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
TABLES = "journal, readings, devices, sink_state, dead_letters, quarantine, downlinks"


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
