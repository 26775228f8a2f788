"""Turns an HTTP answer into success, a retryable failure or a permanent refusal."""

from __future__ import annotations

import email.utils
import time

import httpx

from fieldbridge.errors import PermanentDeliveryError, RetryableDeliveryError

# 401/403/407 say the credentials are wrong, not the message: keep the place and retry (the
# operator fixes the token) instead of moving every message to the dead letters.
RETRYABLE_STATUS = frozenset({401, 403, 407, 408, 425, 429})

# Answers about the destination (its address, method or credentials), not about the message.
# Given to every message a sink offers, they mean the destination is failing: the sink keeps
# the messages and backs off (state `failing`) instead of moving them to the dead letters.
DESTINATION_REFUSALS = frozenset({401, 403, 404, 405, 407, 410})


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def check_response(response: httpx.Response, what: str) -> None:
    """Return if 2xx; raise the DeliveryError the status calls for."""
    status = response.status_code
    if 200 <= status < 300:
        return
    body = response.text[:4096]
    message = f"{what} answered HTTP {status}"
    if status >= 500 or status in RETRYABLE_STATUS:
        raise RetryableDeliveryError(
            message,
            status=status,
            body=body,
            retry_after=retry_after(response.headers.get("retry-after")),
        )
    raise PermanentDeliveryError(message, status=status, body=body)


def transport_failure(exc: httpx.TransportError, what: str) -> RetryableDeliveryError:
    """A connection error or timeout: the destination may take the batch later."""
    return RetryableDeliveryError(f"{what} unreachable: {type(exc).__name__}: {exc}")
