"""The store: journal, readings, devices, sink cursors, dead letters, quarantine, downlinks."""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType

from fieldbridge.store.activity import ActivityQueries
from fieldbridge.store.apitokens import ApiTokenQueries
from fieldbridge.store.audit import AuditQueries
from fieldbridge.store.db import Database, Timeout
from fieldbridge.store.downlinks import DownlinkQueries
from fieldbridge.store.dunedb import DuneActionQueries
from fieldbridge.store.journal import JournalQueries, Pending
from fieldbridge.store.liveness import LivenessQueries
from fieldbridge.store.messages import MessageQueries
from fieldbridge.store.messagetypes import MessageTypeQueries
from fieldbridge.store.registry import RegistryQueries
from fieldbridge.store.sinkstate import Replay, SinkStateQueries
from fieldbridge.store.sourcecursors import SourceCursorQueries
from fieldbridge.store.tokens import TokenQueries
from fieldbridge.store.urls import StoreUrl, parse_store_url
from fieldbridge.store.users import UserQueries

__all__ = ["Pending", "Store", "StoreUrl", "Timeout", "open_store", "parse_store_url"]


class Store(
    JournalQueries,
    RegistryQueries,
    LivenessQueries,
    SinkStateQueries,
    DownlinkQueries,
    MessageQueries,
    MessageTypeQueries,
    TokenQueries,
    DuneActionQueries,
    SourceCursorQueries,
    UserQueries,
    ApiTokenQueries,
    AuditQueries,
    ActivityQueries,
):
    """Every read and write of fieldbridge's state goes through here."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._queued_listeners = []

    async def replay(
        self, name: str, *, from_id: int | None = None, since: float | None = None
    ) -> Replay:
        """Ask the running sink to send again from a message id, or from the first message
        received at or after `since` (exactly one of the two); nothing to send again when no
        message is that recent."""
        if (from_id is None) == (since is None):
            raise ValueError("give exactly one of from_id and since")
        head = await self.head_id()
        if from_id is None:
            assert since is not None
            first = await self.first_id_since(since)
            from_id = first if first is not None else head + 1
        await self.request_replay(name, from_id - 1)
        return Replay(name, from_id, head, max(0, head - (from_id - 1)))

    async def ping(self, within: Timeout | None = None) -> None:
        """Raise StoreError unless the store answers (in time)."""
        await self.db.fetchall("SELECT 1", within=within)

    async def schema_revision(self, within: Timeout | None = None) -> str | None:
        """The Alembic revision the (migrated) store's schema is at; StoreError if unreachable
        or silent for `within`."""
        rows = await self.db.fetchall("SELECT version_num FROM alembic_version", within=within)
        return str(rows[0][0]) if rows else None

    async def close(self) -> None:
        await self.db.close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def open_store(
    url: str | StoreUrl,
    *,
    synchronous: str = "full",
    busy_timeout_ms: int = 5000,
    commit_timeout_s: float | None = None,
    libpq_params: Mapping[str, str] | None = None,
) -> Store:
    """A Store on the database a URL names (schema must be migrated first).

    `commit_timeout_s` bounds every call (unset: 10 s, on SQLite at least busy_timeout + 5 s);
    `libpq_params` are PostgreSQL connection keywords the URL does not set itself.
    """
    parsed = parse_store_url(url) if isinstance(url, str) else url
    if parsed.sqlite_path is not None:
        from fieldbridge.store.sqlite import SqliteDatabase

        return Store(
            SqliteDatabase(
                parsed.sqlite_path,
                synchronous=synchronous,
                busy_timeout_ms=busy_timeout_ms,
                commit_timeout_s=commit_timeout_s,
            )
        )
    from fieldbridge.store.postgres import DEFAULT_COMMIT_TIMEOUT_S, PostgresDatabase

    return Store(
        PostgresDatabase(
            parsed.libpq_url,
            params=libpq_params,
            commit_timeout_s=commit_timeout_s or DEFAULT_COMMIT_TIMEOUT_S,
        )
    )
