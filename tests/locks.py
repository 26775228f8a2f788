"""Real store failures for tests: another connection holding the SQLite write lock."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def sqlite_write_locked(path: Path) -> Iterator[None]:
    """Another program (a backup, a hand-run sqlite3) holds the write lock until the block ends."""
    blocker = sqlite3.connect(path, isolation_level=None, timeout=5.0)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
