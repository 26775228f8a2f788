"""The exception hierarchy every layer raises and catches by meaning."""

from __future__ import annotations

from collections.abc import Mapping


class FieldbridgeError(Exception):
    """Base class of every error fieldbridge raises on purpose."""


class ConfigError(FieldbridgeError):
    """The settings file or environment is invalid; the message names the key."""


class DecodeError(FieldbridgeError):
    """A payload could not be decoded; it goes to quarantine with this reason."""

    def __init__(self, reason: str, *, malformed: bool = False, cause: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.malformed = malformed  # not even the outer syntax (JSON, protobuf) parsed
        # A short label metrics count rejections by, e.g. "unknown_token"; None = "invalid".
        self.cause = cause


class StoreError(FieldbridgeError):
    """The store failed; nothing of the transaction was written. Retry later."""


class DeliveryError(FieldbridgeError):
    """A destination did not accept a batch."""

    retryable: bool = True

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        body: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.retry_after = retry_after


class RetryableDeliveryError(DeliveryError):
    """The destination may accept the same batch later (timeout, 5xx, 429)."""

    retryable = True


class PermanentDeliveryError(DeliveryError):
    """The destination refused the batch for good (4xx other than 408/425/429)."""

    retryable = False


class PartialDeliveryError(PermanentDeliveryError):
    """Part of a batch was refused for good: `rejected` maps the refused messages' journal ids
    to the reason. `confirm`: the destination's answer may not name every refusal (an InfluxDB
    partial write), so the others are sent again once, to confirm, which it must take
    harmlessly; without it the others count as delivered (the sink held the refused back)."""

    def __init__(
        self,
        message: str,
        rejected: Mapping[int, str],
        *,
        status: int | None = None,
        confirm: bool = False,
    ) -> None:
        super().__init__(message, status=status, body="; ".join(sorted(set(rejected.values()))))
        self.rejected = dict(rejected)
        self.confirm = confirm


class AuthError(FieldbridgeError):
    """An OAuth token could not be had: the endpoint refused the credentials (`refused`, with
    its status) or did not answer. `retry_after`: seconds until the next try is allowed."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        refused: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.refused = refused
        self.retry_after = retry_after


class ApiError(FieldbridgeError):
    """An API call failed: the HTTP status (None: no answer) and the server's own message.

    `unanswered`: the request may have reached the server, which did not answer (a timeout,
    a dropped connection), so what it asked for may have been done.
    """

    def __init__(
        self, message: str, *, status: int | None = None, detail: str = "", unanswered: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail
        self.unanswered = unanswered


class PermissionDenied(ApiError):
    """The API refused the call for the caller's permissions (HTTP 403)."""


class NotFound(ApiError):
    """The API has no such record (HTTP 404, or a `null` answer)."""


class IncompatibleDependency(ConfigError):
    """An installed library lacks what fieldbridge relies on; the message names it and the fix."""
