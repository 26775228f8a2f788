"""An in-process Efento CoAP source on a real store and UDP port, with real CoAP clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiocoap
from aiocoap.numbers.codes import Code

from fieldbridge.ingest import Ingest
from fieldbridge.sources.access import StoreAccess
from fieldbridge.sources.coap.server import EfentoCoapSource
from fieldbridge.sources.coap.settings import EfentoCoapSettings
from fieldbridge.store import Store, open_store, parse_store_url
from fieldbridge.store.migrate import upgrade
from tests.support import paths
from tests.support.efento_sim import free_udp_port

SEEDS = paths.FIXTURES / "efento" / "seed_frames.json"
COAP_CLIENT = shutil.which("coap-client-notls") or "coap-client-notls"
CLIENT_TIMEOUT = 15.0  # seconds a coap-client run may take


def seed_frames() -> dict[str, bytes]:
    """The seed's /m, /i and /c frames, by endpoint."""
    data = json.loads(SEEDS.read_text())
    return {f["endpoint"]: bytes.fromhex(f["hex"]) for f in data["frames"]}


@dataclass
class Harness:
    store: Store
    source: EfentoCoapSource
    port: int
    client: Any  # aiocoap.Context

    def uri(self, path: str) -> str:
        return f"coap://127.0.0.1:{self.port}/{path.lstrip('/')}"

    async def post(self, path: str, payload: bytes) -> aiocoap.Message:
        """A CON POST through aiocoap's client."""
        request = aiocoap.Message(code=Code.POST, uri=self.uri(path), payload=payload)
        return await asyncio.wait_for(self.client.request(request).response, 10.0)

    async def get(self, path: str) -> aiocoap.Message:
        request = aiocoap.Message(code=Code.GET, uri=self.uri(path))
        return await asyncio.wait_for(self.client.request(request).response, 10.0)

    async def refresh(self) -> None:
        """Let the source see downlinks queued behind its back now, not at its next poll."""
        await self.source.planner.refresh()


@contextlib.asynccontextmanager
async def serve(
    db: Path | str, *, flush_ms: float = 2.0, busy_timeout_ms: int = 5000, **settings: Any
) -> AsyncIterator[Harness]:
    """A source named "efento" on a free UDP port; `db` is a SQLite path or a store URL."""
    url = db if isinstance(db, str) else f"sqlite:///{db}"
    await asyncio.to_thread(upgrade, parse_store_url(url))
    port = free_udp_port()
    config = EfentoCoapSettings(name="efento", listen=f"127.0.0.1:{port}", **settings)
    store = open_store(url, busy_timeout_ms=busy_timeout_ms)
    client = await aiocoap.Context.create_client_context()
    try:
        async with store, Ingest(store, flush_ms=flush_ms) as ingest:
            access = StoreAccess(
                devices=store, journal=store, downlinks=store, liveness=store, cursors=store
            )
            source = EfentoCoapSource(config, ingest, access)
            async with source:
                yield Harness(store, source, port, client)
    finally:
        await client.shutdown()


async def coap_client(*args: str) -> tuple[str, bytes]:
    """Run libcoap's coap-client; returns (its message log, the response payload)."""
    with tempfile.TemporaryDirectory() as tmp:
        out_file = Path(tmp) / "payload.bin"
        process = await asyncio.create_subprocess_exec(
            COAP_CLIENT,
            "-v",
            "7",
            "-o",
            str(out_file),
            *args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(process.communicate(), CLIENT_TIMEOUT)
        payload = out_file.read_bytes() if out_file.exists() else b""
    return out.decode("latin-1"), payload


def answers_in(log: str) -> list[str]:
    """Codes of the answers in coap-client's message log (empty ACKs left out), e.g. ['2.01']."""
    found = []
    for line in log.splitlines():
        fields = line.split()
        if len(fields) < 3 or fields[0] != "v:1" or not fields[2].startswith("c:"):
            continue
        code = fields[2][2:]
        if code[:1].isdigit() and code != "0.00":
            found.append(code)
    return found
