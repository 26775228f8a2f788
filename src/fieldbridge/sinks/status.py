"""Each sink's state, cursor, backlog and dead letters as the store has them."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from fieldbridge.model import SinkRunState, TokenHealth
from fieldbridge.plugin import SinkSettings
from fieldbridge.store import Store
from fieldbridge.timefmt import iso


async def sink_rows(
    sinks: Sequence[tuple[str, SinkSettings]], store: Store
) -> list[dict[str, Any]]:
    """One row per configured sink as `fieldbridge sinks status` shows it (and the `sinks`
    remote command): state, cursor, backlog, dead letters, skips, token health."""
    out = []
    for type_name, s in sinks:
        state = await store.sink_state(s.name)
        lag, oldest = await store.lag(state.cursor)
        shown = (
            SinkRunState.DISABLED
            if not s.enabled
            else SinkRunState.PAUSED
            if state.paused
            else state.state
        )
        out.append(
            {
                "name": s.name,
                "type": type_name,
                "enabled": s.enabled,
                "state": shown,
                "cursor": state.cursor,
                "lag_messages": lag,
                "lag_seconds": round(max(0.0, time.time() - oldest), 3) if oldest else 0.0,
                "dead_letters": await store.count_dead_letters(s.name),
                "skipped": await store.sink_skips(s.name),
                "auth": _auth(await store.token_health(f"sink:{s.name}")),
                "last_error": state.last_error,
            }
        )
    return out


def _auth(health: TokenHealth | None) -> dict[str, Any] | None:
    """How getting the sink's OAuth token goes, as the running sink last noted it."""
    if health is None:
        return None
    return {
        "state": "failing" if health.failures else "ok",
        "failures": health.failures,
        "last_error": health.last_error,
        "failed_at": None if health.failed_at is None else iso(health.failed_at),
        "expires_at": None if health.expires_at is None else iso(health.expires_at),
    }
