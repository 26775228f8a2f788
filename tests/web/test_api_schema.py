"""Schemathesis against the API's own OpenAPI document, on a live server: no 5xx anywhere, and
every answer (status, content type, body) is one the document describes."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from fieldbridge.web.server import WebServer
from tests.fakes.webhook import WebhookReceiver
from tests.support.api import running_api
from tests.web.test_api import SERIAL, _devices, _quarantine_fixed_payload

SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance"
)
EXAMPLES = 12  # per operation and phase: the run stays well under a minute on 2 cores
RUN_LIMIT = 240.0  # seconds; only guards against a hang


async def test_the_api_answers_as_its_openapi_document_says(tmp_path: Path) -> None:
    async with WebhookReceiver() as hook:
        sinks = {"webhook": [{"name": "hook", "url": hook.url, "max_backoff": 1.0}]}
        async with running_api(tmp_path, sinks=sinks) as api:
            await _devices(api)
            await _quarantine_fixed_payload(api)
            admin = await api.user("admin")
            queued = await admin.post(
                "/api/v1/efento/downlinks", json={"device": SERIAL, "requests": ["configuration"]}
            )
            assert queued.status_code == 201
            session = admin.cookies.get("fieldbridge_session")
            assert session
            csrf = admin.headers["X-CSRF-Token"]
            async with WebServer(api.app, "127.0.0.1:0") as server:
                base = f"http://127.0.0.1:{server.port}/api"
                run = await asyncio.create_subprocess_exec(
                    SCHEMATHESIS,
                    "run",
                    f"{base}/openapi.json",
                    "--url",
                    base,
                    "-H",
                    f"Cookie: fieldbridge_session={session}",
                    "-H",
                    f"X-CSRF-Token: {csrf}",
                    "--checks",
                    CHECKS,
                    "--max-examples",
                    str(EXAMPLES),
                    "--phases",
                    "examples,coverage,fuzzing",
                    "--seed",
                    "15",
                    # One worker: hypothesis in threads hits CPython 3.11's "AST constructor
                    # recursion depth mismatch" (see tests/conftest.py).
                    "--workers",
                    "1",
                    "--generation-database",
                    "none",
                    "--generation-with-security-parameters",
                    "false",
                    "--request-timeout",
                    "20",
                    "--no-color",
                    "--report-dir",
                    str(tmp_path / "schemathesis"),
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
                    cwd=tmp_path,  # its own state (.schemathesis/) stays out of the tree
                )
                out, _ = await asyncio.wait_for(run.communicate(), RUN_LIMIT)
            text = out.decode(errors="replace")
            assert run.returncode == 0, text
            # The calls got past the gate as the admin: they changed things.
            done = {e.action for e in await api.fb.store.list_audit(limit=1000)}
            assert {"device.update", "sink.pause", "token.create"} <= done, done
