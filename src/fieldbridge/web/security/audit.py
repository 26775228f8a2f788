"""Recording a change in the audit log under the name of whoever made it."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from starlette.requests import HTTPConnection

from fieldbridge.store import Store
from fieldbridge.web.security.principal import principal_of

log = logging.getLogger("fieldbridge.audit")


async def audit(
    request: HTTPConnection,
    store: Store,
    action: str,
    target: str,
    details: Mapping[str, Any] | None = None,
) -> None:
    """Call after every change made through the console or the API."""
    await record(store, principal_of(request).actor, action, target, details)


async def record(
    store: Store,
    actor: str,
    action: str,
    target: str,
    details: Mapping[str, Any] | None = None,
) -> None:
    await store.record_audit(actor, action, target, details)
    log.info("audit: %s %s %s", actor, action, target)
