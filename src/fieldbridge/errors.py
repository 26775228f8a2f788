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
    """The destination kept part of a batch and refused the rest for good (an InfluxDB partial
    write): `rejected` maps the refused messages' journal ids to the reason; the others were
    delivered."""

    def __init__(
        self, message: str, rejected: Mapping[int, str], *, status: int | None = None
    ) -> None:
        super().__init__(message, status=status, body="; ".join(sorted(set(rejected.values()))))
        self.rejected = dict(rejected)


class IncompatibleDependency(ConfigError):
    """An installed library lacks what fieldbridge relies on; the message names it and the fix."""
