"""What the console and the REST API read and steer: the running service's parts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fieldbridge.config import Settings
from fieldbridge.ingest import Ingest
from fieldbridge.observe import Metrics
from fieldbridge.sinks.engine import SinkRunner
from fieldbridge.store import Store
from fieldbridge.web.spy import SpyHub

HealthCheck = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]


@dataclass
class WebContext:
    """Shared by every page and API route; no state of its own beyond the service's."""

    settings: Settings
    store: Store
    metrics: Metrics
    ingest: Ingest
    spy: SpyHub
    health: HealthCheck
    sinks: Sequence[SinkRunner] = field(default_factory=list)
    started_at: float = 0.0
