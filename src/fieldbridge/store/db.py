"""The small async database interface both backends provide to the queries."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

Row = tuple[Any, ...]
Params = Sequence[Any]


class Tx(Protocol):
    """One open transaction. SQL uses ? placeholders on every backend."""

    async def execute(self, sql: str, params: Params = ()) -> None: ...

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None: ...

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]: ...


class Database(Protocol):
    """A connection (pool) to one store."""

    dialect: str  # "sqlite" or "postgresql"

    def transaction(self) -> AbstractAsyncContextManager[Tx]: ...

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]: ...

    async def close(self) -> None: ...
