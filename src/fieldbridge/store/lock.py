"""The lock file that lets one service at a time run on a SQLite database."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from fieldbridge.errors import StoreError

# Hand-written on fcntl.flock rather than the `filelock` package: filelock truncates the lock
# file when it opens it and keeps nobody's pid, so a second service could not say which process
# holds the database. flock is released by the kernel when the holder exits, even on SIGKILL,
# so a crash never leaves a stale lock behind.


class StoreInUse(StoreError):
    """Another service runs on this SQLite database."""


class ServiceLock:
    """Held by `fieldbridge run` on `<database>.lock` while it serves; never by CLI commands."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.path = database.with_name(database.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise StoreInUse naming the database and the holder's pid."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot open the lock file {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise StoreInUse(
                f"another fieldbridge service ({holder}) is running on the SQLite store "
                f"{self.database} (it holds {self.path}); stop it, or give this one its own "
                "store.url"
            ) from None
        except OSError as exc:  # a file system without flock (some network mounts)
            os.close(fd)
            raise StoreError(
                f"cannot lock {self.path} ({exc.strerror}); keep the SQLite store on a local "
                "file system"
            ) from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        # The file stays: removing it could leave two processes each holding a lock, one on
        # the removed file (opened just before) and one on a new file of the same name.
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> ServiceLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _holder(fd: int) -> str:
    """'pid N' from the lock file, or a hint when the holder has not written it yet."""
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return f"pid {text}" if text.isdigit() else "pid not yet written"
