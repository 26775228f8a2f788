"""What a release ships, read from the source tree: its version and its newest schema revision."""

from __future__ import annotations

import tomllib

from alembic.script import ScriptDirectory

from tests.support.paths import ROOT

MIGRATIONS = ROOT / "src" / "fieldbridge" / "store" / "migrations"
# All a wheel is built from: deploy/Dockerfile's build stage copies just these.
BUILD_INPUTS = ("pyproject.toml", "README.md", "src")


def package_version() -> str:
    """pyproject.toml's version: the one source the installed metadata is built from."""
    with (ROOT / "pyproject.toml").open("rb") as handle:
        return str(tomllib.load(handle)["project"]["version"])


def schema_head() -> str:
    """The newest Alembic revision in the source tree (computed: migrations keep being added)."""
    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    assert head is not None, f"no revisions in {MIGRATIONS}"
    return head
