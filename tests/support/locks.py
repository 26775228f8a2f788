"""Real store failures for tests: another connection or process holding the SQLite write lock."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
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


_HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10.0)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
conn.close()
"""


class WriteLockHolder:
    """Another process holding the SQLite write lock (`BEGIN IMMEDIATE`) until `release()`."""

    def __init__(self, path: Path) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()  # blocks until the lock is held, or the child died
        if line.strip() != "locked":
            self._proc.kill()
            raise RuntimeError(f"the lock holder did not take the lock (exit {self._proc.wait()})")

    def release(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.write("\n")
            self._proc.stdin.close()
            self._proc.wait(timeout=10)

    def __enter__(self) -> WriteLockHolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
