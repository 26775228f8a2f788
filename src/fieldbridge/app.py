"""Builds and wires every part of a running fieldbridge; the only module that knows them all."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route

from fieldbridge import __version__
from fieldbridge.config import Settings
from fieldbridge.control import ControlContext, RemoteControl
from fieldbridge.errors import StoreError
from fieldbridge.ingest import Ingest
from fieldbridge.observe import Metrics
from fieldbridge.plugin import SINK_TYPES, SOURCE_TYPES
from fieldbridge.retention import log_report, prune_once
from fieldbridge.runtime import tune_gc
from fieldbridge.sinks.engine import SinkRunner
from fieldbridge.sinks.status import sink_rows
from fieldbridge.sources.access import StoreAccess
from fieldbridge.sources.base import ServesHttp
from fieldbridge.store import Store, Timeout, open_store, parse_store_url
from fieldbridge.store.lock import ServiceLock
from fieldbridge.store.migrate import head_revision, pending_revisions, upgrade, within
from fieldbridge.store.urls import mask_url
from fieldbridge.timefmt import iso
from fieldbridge.web.auth import BearerTokens
from fieldbridge.web.connections import ConnectionGuard, ConnectionLimits
from fieldbridge.web.context import WebContext
from fieldbridge.web.security.firstrun import announce, ensure_first_admin
from fieldbridge.web.security.login import LoginRoutes
from fieldbridge.web.security.middleware import SecurityMiddleware
from fieldbridge.web.security.public import public_paths
from fieldbridge.web.security.resolve import Resolver
from fieldbridge.web.server import OwnPathsMount, WebServer, build_app
from fieldbridge.web.spy import SpyEndpoint, SpyHub

log = logging.getLogger("fieldbridge")

HOUSEKEEPING_EVERY = 60.0  # seconds between quarantine gauge updates
RETENTION_EVERY = 3600.0  # seconds between retention passes
FIRST_PRUNE_AFTER = 30.0  # seconds from start to the first pass: a machine up for minutes prunes
CONTROL_DEVICES = 1000  # devices a `devices` remote command lists at most
SINK_STOP_GRACE = 3.0  # seconds a sink may take to finish a send at shutdown
# /healthz answers within 2 s (docs/operations.md): its look at the store gets 1.5 of them, on a
# connection or thread of its own time, never waiting behind a commit past that.
HEALTH_STORE_CHECK = Timeout(1.5, "the /healthz store check")


async def migrate(settings: Settings, on_step: Callable[[str], None] | None = None) -> list[str]:
    """Bring the store's schema to the newest revision (within store.migrate_timeout_s);
    `on_step` is called after each revision applied."""
    store = settings.store
    url = parse_store_url(store.url)
    params = store.libpq_params()
    return await within(
        store.migrate_timeout_s,
        url,
        lambda: upgrade(url, on_step, busy_timeout_ms=store.busy_timeout_ms, libpq_params=params),
    )


async def pending_migrations(settings: Settings) -> list[str]:
    """The revisions `migrate` would apply, oldest first (within store.migrate_timeout_s)."""
    store = settings.store
    url = parse_store_url(store.url)
    params = store.libpq_params()
    return await within(
        store.migrate_timeout_s,
        url,
        lambda: pending_revisions(url, busy_timeout_ms=store.busy_timeout_ms, libpq_params=params),
    )


def build_store(settings: Settings) -> Store:
    store = settings.store
    return open_store(
        store.url,
        synchronous=store.synchronous,
        busy_timeout_ms=store.busy_timeout_ms,
        commit_timeout_s=store.commit_timeout_s,
        libpq_params=store.libpq_params(),
    )


class Service:
    """One fieldbridge process: sources, ingest, store, sinks, HTTP server."""

    def __init__(self, settings: Settings, *, first_prune_after: float = FIRST_PRUNE_AFTER) -> None:
        self.settings = settings
        self.first_prune_after = first_prune_after
        self.metrics = Metrics()
        self.store = build_store(settings)
        ingest = settings.ingest
        self.ingest = Ingest(
            self.store,
            batch_size=ingest.batch_size,
            flush_ms=ingest.flush_ms,
            queue_bound=ingest.queue_bound,
            max_in_flight_bytes=ingest.max_in_flight_bytes,
            in_flight_wait_s=ingest.in_flight_wait_s,
            metrics=self.metrics,
        )
        self.sinks = [
            SinkRunner(type_name, s, SINK_TYPES[type_name].build(s), self.store, self.metrics)
            for type_name, s in settings.sink_settings
        ]
        access = StoreAccess(
            devices=self.store,
            journal=self.store,
            downlinks=self.store,
            liveness=self.store,
            cursors=self.store,
        )
        self.sources = [
            SOURCE_TYPES[type_name].build(s, self.ingest, access)
            for type_name, s in settings.source_settings
        ]
        self.http_port: int | None = None
        self.web_app: Starlette | None = None  # what the HTTP server serves, once it does
        self.web_context: WebContext | None = None  # what its pages and API routes read
        self.exit_code = 0  # what the process exits with once run() returns (reboot: not 0)
        self.started_at = time.time()
        self._stop: asyncio.Event | None = None
        self.control = (
            RemoteControl(settings.control, self._control_context())
            if settings.control.enabled
            else None
        )
        for runner in self.sinks:
            self.ingest.on_commit(runner.wake)

    def _control_context(self) -> ControlContext:
        return ControlContext(
            status=self._status,
            sinks=lambda: sink_rows(self.settings.sink_settings, self.store),
            devices=self._devices,
            restart=self.restart,
        )

    def restart(self, exit_code: int) -> None:
        """Stop gracefully (flush, acknowledge), then exit with `exit_code` for a supervisor."""
        self.exit_code = exit_code
        if self._stop is not None:
            self._stop.set()

    async def _status(self) -> dict[str, Any]:
        sources: dict[str, Any] = {}
        for source in self.sources:
            stats = getattr(source, "stats", None)
            if dataclasses.is_dataclass(stats) and not isinstance(stats, type):
                sources[source.name] = dataclasses.asdict(stats)
            else:
                sources[source.name] = {}
        sinks = {
            row["name"]: {
                "state": row["state"],
                "cursor": row["cursor"],
                "lag_messages": row["lag_messages"],
                "lag_seconds": row["lag_seconds"],
                "dead_letters": row["dead_letters"],
            }
            for row in await sink_rows(self.settings.sink_settings, self.store)
        }
        return {
            "version": __version__,
            "uptime_s": round(time.time() - self.started_at, 3),
            "messages": await self.store.head_id(),
            "sources": sources,
            "sinks": sinks,
        }

    async def _devices(self) -> dict[str, Any]:
        devices = await self.store.list_devices(limit=CONTROL_DEVICES)
        return {
            "count": len(devices),
            "devices": [
                {"id": d.id, "kind": d.kind, "last_seen": iso(d.last_seen), "status": d.status}
                for d in devices
            ],
        }

    async def health(self) -> tuple[bool, dict[str, Any]]:
        schema: dict[str, str | None] = {"revision": None, "head": head_revision()}
        detail: dict[str, Any] = {
            "status": "ok",
            "version": __version__,
            "store": "ok",
            "schema": schema,
        }
        try:
            schema["revision"] = await self.store.schema_revision(HEALTH_STORE_CHECK)
        except StoreError as exc:
            detail.update(status="unavailable", store=f"unreachable: {exc}")
        # A store can answer a read and still refuse every write (a full disk, a held lock).
        ingest = self.ingest
        detail["last_commit"] = {
            "ok": ingest.last_commit_ok,
            "at": None if ingest.last_commit_at is None else iso(ingest.last_commit_at),
            "error": ingest.last_commit_error,
        }
        if ingest.last_commit_ok is False and detail["status"] == "ok":
            detail["status"] = "degraded"
        detail["sinks"] = {r.name: _sink_health(r) for r in self.sinks}
        return detail["status"] == "ok", detail

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Serve until `stop` is set, then drain: sources, ingest, sinks, store."""
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(_service_lock(self.settings))
            except StoreError:
                await self.store.close()
                raise
            await self._run(stop, ready)

    async def _run(self, stop: asyncio.Event, ready: asyncio.Event | None) -> None:
        self._stop = stop
        applied = await migrate(self.settings)
        if applied:
            log.info("store migrated to revision %s", applied[-1])
        tasks: list[asyncio.Task[None]] = []
        housekeeping = [
            asyncio.create_task(self._housekeeping(), name="housekeeping"),
            asyncio.create_task(self._retention(), name="retention"),
        ]
        try:
            async with AsyncExitStack() as stack:
                await stack.enter_async_context(self.ingest)
                tasks = [
                    asyncio.create_task(r.run(), name=f"sink-{r.name}")
                    for r in self.sinks
                    if r.settings.enabled
                ]
                # Before the sources connect: its full collection (about 50 ms with everything
                # imported) would otherwise hold up the first messages, as it did the first
                # burst of bench/mqtt_to_influx.py.
                tune_gc()
                for source in self.sources:
                    await stack.enter_async_context(source)
                if self.control is not None:
                    await stack.enter_async_context(self.control)
                await self._start_web(stack)
                if ready is not None:
                    ready.set()
                await stop.wait()
                log.info("stopping: no new payloads; committing and answering those in flight")
            log.info("ingest drained")
        finally:
            for task in housekeeping:
                task.cancel()
            await self._stop_tasks([*housekeeping, *tasks])
            await self.store.close()
        log.info("fieldbridge stopped")

    async def _start_web(self, stack: AsyncExitStack) -> None:
        http = self.settings.http
        if not http.enabled:
            log.info("fieldbridge running (store %s, HTTP off)", mask_url(self.settings.store.url))
            return
        auth = BearerTokens(http.tokens)
        routes = [
            Route(route.path, auth.guard(route.endpoint), methods=list(route.methods))
            for source in self.sources
            if isinstance(source, ServesHttp)
            for route in source.http_routes
        ]
        spy = SpyHub(
            self.ingest,
            max_watchers=self.settings.spy.max_watchers,
            queue_bytes=self.settings.spy.queue_bytes,
            metrics=self.metrics,
        )
        gate = Middleware(
            SecurityMiddleware,
            resolver=Resolver(self.store, http.tokens),
            is_public=public_paths({r.path for r in routes}, http.metrics_public),
        )
        # Here, not at the top: every CLI command imports this module, and FastAPI and the
        # console's templates cost each of them half a second.
        from fieldbridge.web.api import api_app
        from fieldbridge.web.console import console_routes

        self.web_context = WebContext(
            settings=self.settings,
            store=self.store,
            metrics=self.metrics,
            ingest=self.ingest,
            spy=spy,
            health=self.health,
            sinks=self.sinks,
            started_at=self.started_at,
        )
        pages: list[BaseRoute] = [
            *LoginRoutes(self.store, http).routes(),
            *console_routes(self.web_context),
            OwnPathsMount("/api", api_app(self.web_context)),
        ]
        app = build_app(
            routes,
            self.health,
            self.metrics,
            SpyEndpoint(spy).handle,
            pages=pages,
            middleware=[gate],
        )
        self.web_app = app
        first_password = await ensure_first_admin(self.store)
        limits = ConnectionLimits(
            header_timeout_s=http.header_timeout_s,
            body_timeout_s=http.body_timeout_s,
            max_connections=http.max_connections,
        )
        guard = ConnectionGuard(limits, self.metrics)
        server = WebServer(
            app, http.listen, guard=guard, tls_cert=http.tls_cert, tls_key=http.tls_key
        )  # bound to its port, not answering yet
        self.http_port = server.port
        host = http.listen.rpartition(":")[0] or "127.0.0.1"
        scheme = "https" if http.tls_cert else "http"
        # Said before the server answers: whoever waits for /healthz then finds these written.
        log.info(
            "fieldbridge serving on %s://%s:%d (store %s)",
            scheme,
            host,
            server.port,
            mask_url(self.settings.store.url),
        )
        if first_password is not None:
            shown = "127.0.0.1" if host in ("0.0.0.0", "[::]", "::") else host
            announce(
                first_password,
                f"{scheme}://{shown}:{server.port}",
                json_lines=self.settings.log.format == "json",
            )
        await stack.enter_async_context(server)
        stack.callback(spy.close)  # runs first at shutdown: open spy streams end, uvicorn drains

    async def _stop_tasks(self, tasks: list[asyncio.Task[None]]) -> None:
        for runner in self.sinks:
            runner.stop()
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=SINK_STOP_GRACE)
        for task in late:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _housekeeping(self) -> None:
        while True:
            try:
                self.metrics.quarantine_size.set(await self.store.count_quarantine())
            except StoreError as exc:
                log.warning("housekeeping skipped: %s", exc)
            await asyncio.sleep(HOUSEKEEPING_EVERY)

    async def _retention(self) -> None:
        """A retention pass soon after start, then every RETENTION_EVERY."""
        delay = self.first_prune_after
        while True:
            await asyncio.sleep(delay)
            try:
                log_report(await prune_once(self.settings, self.store))
            except StoreError as exc:
                log.warning("retention skipped, tried again in %.0f s: %s", HOUSEKEEPING_EVERY, exc)
                delay = HOUSEKEEPING_EVERY
                continue
            delay = RETENTION_EVERY


def _sink_health(runner: SinkRunner) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "type": runner.type_name,
        "state": runner.state,
        "last_error": runner.last_error,
    }
    extra = runner.health()
    if extra:
        shown.update(extra)
    return shown


def _service_lock(settings: Settings) -> contextlib.AbstractContextManager[object]:
    """One service per SQLite file: two would deliver everything twice. Several processes may
    share one PostgreSQL for ingest (docs/architecture.md), so it takes no such lock."""
    path = parse_store_url(settings.store.url).sqlite_path
    return contextlib.nullcontext() if path is None else ServiceLock(path)


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Run the service until `stop` is set."""
    await Service(settings).run(stop)


def install_stop_signals(stop: asyncio.Event) -> None:
    import signal

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
