"""A running fieldbridge with the web console, in a background thread, for browser tests.

The service is the real one (`Service` on a SQLite file in a temporary folder: sources,
ingest, sinks), serving its console as `fieldbridge run` does, with an admin and a viewer.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from fieldbridge.app import Service
from fieldbridge.config import load_settings
from fieldbridge.store import Store
from tests.support.processes import to_toml
from tests.support.web import store_user

T = TypeVar("T")
START_TIMEOUT = 20.0
ADMIN = ("ada", "admin-password-1")  # name, password
VIEWER = ("vera", "viewer-password-1")


class ConsoleService:
    """`with ConsoleService(tmp_path, sinks=...) as fb:` serves until the block ends."""

    def __init__(
        self,
        workdir: Path,
        *,
        sinks: Mapping[str, Any] | None = None,
        sources: Mapping[str, Any] | None = None,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.db_path = workdir / "fieldbridge.db"
        config: dict[str, Any] = {
            "store": {"url": f"sqlite:///{self.db_path}"},
            "http": {"listen": "127.0.0.1:0"},
            "ingest": {"flush_ms": 1.0},
        }
        if sources:
            config["sources"] = sources
        if sinks:
            config["sinks"] = sinks
        self.config_path = workdir / "fieldbridge.toml"
        self.config_path.write_text(to_toml(config))
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._stop: asyncio.Event | None = None
        self._main: Future[None] | None = None
        self.service: Service | None = None
        self.console_port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.console_port}"

    @property
    def ingest_url(self) -> str:
        assert self.service is not None
        return f"http://127.0.0.1:{self.service.http_port}/api/v1/ingest"

    @property
    def store(self) -> Store:
        assert self.service is not None
        return self.service.store

    def call(self, work: Callable[[], Awaitable[T]], timeout: float = 10.0) -> T:
        """Run `work()` on the service's event loop (store calls) and return its result."""

        async def run() -> T:
            return await work()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def __enter__(self) -> ConsoleService:
        self._thread.start()
        started: Future[None] = Future()
        self._main = asyncio.run_coroutine_threadsafe(self._serve(started), self.loop)
        started.result(START_TIMEOUT)
        return self

    async def _serve(self, started: Future[None]) -> None:
        try:
            service = self.service = Service(load_settings(self.config_path))
            ready = asyncio.Event()
            stop = self._stop = asyncio.Event()
            task = asyncio.create_task(service.run(stop, ready))
            waiter = asyncio.create_task(ready.wait())
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                await task
            await store_user(service.store, ADMIN[0], "admin", ADMIN[1])
            await store_user(service.store, VIEWER[0], "viewer", VIEWER[1])
            assert service.http_port is not None
            self.console_port = service.http_port  # app.py's own wiring: gate, login, console
            started.set_result(None)
            await stop.wait()
            await task
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        if self._main is not None:
            self._main.result(20.0)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10.0)
        self.loop.close()
