"""What every command needs: the settings, a migrated store, and uniform error handling."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import typer

from fieldbridge.app import build_store, migrate
from fieldbridge.cli.output import fail
from fieldbridge.config import Settings, load_settings
from fieldbridge.errors import ConfigError, StoreError
from fieldbridge.store import Store

T = TypeVar("T")


def settings_of(ctx: typer.Context) -> Settings:
    """The validated settings, or exit 2 naming the bad key."""
    path: Path | None = ctx.obj.get("config") if ctx.obj else None
    preset: str | None = ctx.obj.get("preset") if ctx.obj else None
    try:
        return load_settings(path, preset)
    except ConfigError as exc:
        fail(str(exc), code=2)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except ConfigError as exc:
        fail(str(exc), code=2)
    except StoreError as exc:
        fail(f"{exc}\n(check store.url, or FIELDBRIDGE_STORE__URL, and that the database runs)")


def with_store(ctx: typer.Context, action: Callable[[Store], Awaitable[T]]) -> T:
    """Run `action` on the migrated store of the current settings."""
    settings = settings_of(ctx)

    async def go() -> T:
        await migrate(settings)
        store = build_store(settings)
        async with store:
            return await action(store)

    return run_async(go())
