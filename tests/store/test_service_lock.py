"""One `fieldbridge run` per SQLite file: a second one refuses; CLI commands work beside it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fieldbridge.store.lock import ServiceLock, StoreInUse
from tests.support.processes import READY_TIMEOUT, FieldbridgeProcess


def test_a_second_service_on_the_same_sqlite_file_refuses_to_start(tmp_path: Path) -> None:
    with FieldbridgeProcess(tmp_path / "first") as first:
        first.start()
        second = FieldbridgeProcess(
            tmp_path / "second", store={"url": f"sqlite:///{first.db_path}"}
        )
        with second:
            second.spawn()
            assert second.wait(READY_TIMEOUT) == 1
            said = " ".join(second.output_since_start().split())  # unwrap what rich wrapped
            assert f"error: another fieldbridge service (pid {first.pid})" in said
            assert f"SQLite store {first.db_path}" in said
            assert "Traceback" not in said
            assert first.running

            # CLI commands take no such lock: they work beside the running service.
            for command in (["sinks", "status", "--json"], ["db", "prune", "--dry-run"]):
                done = second.cli(*command)
                assert done.returncode == 0, f"{command}: {done.stderr}"

            # The kernel drops the lock of a killed holder: no stale lock blocks the next start.
            first.kill()
            second.start()
            assert second.running


def test_the_lock_names_its_holder_and_goes_with_it(tmp_path: Path) -> None:
    database = tmp_path / "var" / "fieldbridge.db"
    with ServiceLock(database) as held:
        assert held.path == tmp_path / "var" / "fieldbridge.db.lock"
        assert held.path.read_text() == f"{os.getpid()}\n"
        with pytest.raises(StoreInUse) as refused:
            ServiceLock(database).acquire()
        assert f"(pid {os.getpid()})" in str(refused.value)
        assert str(database) in str(refused.value)
    with ServiceLock(database):  # released: the next holder gets it
        pass
