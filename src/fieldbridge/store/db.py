"""The small async database interface both backends provide to the queries."""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

Row = tuple[Any, ...]
Params = Sequence[Any]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Execute:
    sql: str
    params: Params = ()


@dataclass(frozen=True, slots=True)
class ExecuteMany:
    sql: str
    rows: Sequence[Params]


@dataclass(frozen=True, slots=True)
class Fetch:
    sql: str
    params: Params = ()


Op = Execute | ExecuteMany | Fetch


@dataclass(frozen=True, slots=True)
class Timeout:
    """How long one store call (a whole transaction, or one query) may take, and what sets it:
    the error that reports a store that did not answer names it."""

    seconds: float
    setting: str = "store.commit_timeout_s"

    def error(self, store: str) -> str:
        return f"{store} did not answer within {self.seconds:g} s ({self.setting})"


Plan = Generator[Op, list[Row] | None, T]
"""A transaction written without I/O: it yields operations and receives Fetch results.

The SQLite backend runs a whole plan in one call on its writer thread, so a hot transaction
never waits for the event loop between statements; PostgreSQL drives it asynchronously.
"""


class Tx(Protocol):
    """One open transaction. SQL uses ? placeholders on every backend."""

    async def execute(self, sql: str, params: Params = ()) -> None: ...

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None: ...

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]: ...


class Database(Protocol):
    """A connection (pool) to one store."""

    dialect: str  # "sqlite" or "postgresql"

    def transaction(self, within: Timeout | None = None) -> AbstractAsyncContextManager[Tx]:
        """One transaction, all of it within the given time (default: store.commit_timeout_s)."""
        ...

    async def run(self, plan: Plan[T]) -> T:
        """Run a plan as one transaction within store.commit_timeout_s; roll back if it
        raises."""
        ...

    async def fetchall(
        self, sql: str, params: Params = (), *, within: Timeout | None = None
    ) -> list[Row]: ...

    async def close(self) -> None: ...


async def drive(tx: Tx, plan: Plan[T]) -> T:
    """Run a plan's operations one by one on an async transaction."""
    result: list[Row] | None = None
    while True:
        try:
            op = plan.send(result)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        result = None
        if isinstance(op, Fetch):
            result = await tx.fetchall(op.sql, op.params)
        elif isinstance(op, ExecuteMany):
            await tx.executemany(op.sql, op.rows)
        else:
            await tx.execute(op.sql, op.params)
