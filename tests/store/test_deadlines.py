"""SQLite calls past store.commit_timeout_s: the caller is answered, the store stays sane."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fieldbridge.errors import StoreError
from fieldbridge.model import SinkRunState
from fieldbridge.store import open_store, parse_store_url
from fieldbridge.store.migrate import upgrade
from tests.conftest import eventually

# Real work for the writer thread: seconds of it on any machine, far past the deadline below.
SLOW = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20000000) "
    "SELECT COUNT(*) FROM c"
)
DEADLINE_S = 0.3


async def test_a_transaction_past_its_deadline_fails_at_once_and_is_rolled_back(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    upgrade(parse_store_url(url))
    async with open_store(url, busy_timeout_ms=100, commit_timeout_s=DEADLINE_S) as store:
        started = time.monotonic()
        with pytest.raises(StoreError, match=r"did not answer within 0.3 s \(store\.commit_tim"):
            async with store.db.transaction() as tx:
                await tx.execute(
                    "INSERT INTO sink_state (name, cursor, updated_at) VALUES ('lost', 7, 0)"
                )
                await tx.fetchall(SLOW)
        # Answered at the deadline, while the thread still counts (generous for a busy machine).
        assert time.monotonic() - started < DEADLINE_S + 1.0

        # The next write queues behind the slow statement and the rollback, then commits on a
        # connection outside any transaction.
        async def saved() -> bool:
            try:
                await store.save_progress(
                    "kept", cursor=3, state=SinkRunState.IDLE, last_error=None
                )
            except StoreError as exc:
                assert "store.commit_timeout_s" in str(exc)
                return False
            return True

        await eventually(saved, "a write after the slow transaction")
        assert (await store.sink_state("kept")).cursor == 3
        assert (await store.sink_state("lost")).cursor == 0  # rolled back, never committed
        assert [s.name for s in await store.sink_states()] == ["kept"]
