"""A real SinkRunner task for the length of a block, for the sink tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fieldbridge.sinks.engine import SinkRunner


@contextlib.asynccontextmanager
async def run_sink(runner: SinkRunner) -> AsyncIterator[SinkRunner]:
    """Run `runner` until the block ends; stopping it must be clean."""
    task = asyncio.create_task(runner.run(), name=f"sink-{runner.name}")
    try:
        yield runner
    finally:
        runner.stop()
        await asyncio.wait_for(task, 10)
    assert runner.state == "stopped"
