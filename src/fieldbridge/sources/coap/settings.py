"""Settings of one Efento CoAP source ([[sources.efento]]), checked once at start."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from fieldbridge.codecs import efento
from fieldbridge.codecs.efento import splits
from fieldbridge.model import Codec
from fieldbridge.plugin import SourceSettings

ENDPOINTS = ("m", "i", "c", "t")


class EfentoCoapSettings(SourceSettings):
    """[[sources.efento]]"""

    listen: str = "0.0.0.0:5683"
    # Path prefixes the four endpoints are served under: "" gives /m, "efento" gives /efento/m.
    path_prefix: list[str] = Field(default_factory=lambda: [""])
    # Cloud tokens accepted from every sensor. When any is set (or require_token is true), a
    # frame must carry one of them or its device's registry attribute allowed_cloud_token.
    tokens: list[SecretStr] = Field(default_factory=list)
    require_token: bool | None = None  # None: required exactly when tokens are set
    # Where sensors put the token: None = in the payload (cloud_token_coap_option 65000),
    # else the number of the CoAP option (cloud_token_coap_option 1..64999).
    token_option: int | None = Field(default=None, ge=1, le=64999)
    # When the 2.01 to a CON /m asks the sensor for its configuration (/c).
    config_request: Literal["on_hash_change", "always", "never"] = "on_hash_change"
    # Seconds between looks in the store for downlinks queued by the CLI or another process.
    downlink_poll: float = Field(default=1.0, gt=0, le=3600)
    # How often a configuration downlink is sent again when the sensor keeps the old hash.
    downlink_attempts: int = Field(default=3, ge=1, le=100)
    # Seconds the parts of a split /c upload are kept while waiting for the last one.
    split_timeout: float = Field(default=300.0, gt=0)
    # Bounds on the split uploads held in memory (far above a sensor's few KB in a few parts);
    # a part beyond them gets 4.13 and is quarantined with the reason.
    split_max_parts: int = Field(default=splits.MAX_PARTS, ge=2, le=10_000)
    split_max_upload_bytes: int = Field(default=splits.MAX_UPLOAD_BYTES, ge=1024)
    split_max_bytes: int = Field(default=splits.MAX_BYTES, ge=1024)
    # Seconds a CON waits for its answer before it gets an empty ACK and, later, the answer
    # as a separate response (RFC 7252 §5.2.2). Under the sensor's ACK_TIMEOUT (2 s), so it
    # does not retransmit; 60 is beyond its whole retransmission window (about 45 s), i.e.
    # answers only ever piggy-backed.
    separate_after: float = Field(default=1.0, gt=0, le=60)

    @field_validator("listen")
    @classmethod
    def _host_port(cls, listen: str) -> str:
        parse_listen(listen)
        return listen

    @field_validator("path_prefix", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("path_prefix")
    @classmethod
    def _segments(cls, prefixes: list[str]) -> list[str]:
        if not prefixes:
            raise ValueError('give at least one prefix ("" serves /m, /i, /c, /t)')
        cleaned = [p.strip("/") for p in prefixes]
        if len(set(cleaned)) != len(cleaned):
            raise ValueError("a prefix is listed twice")
        for prefix in cleaned:
            if prefix and any(not s or len(s) > 255 for s in prefix.split("/")):
                raise ValueError(f"{prefix!r}: empty or over-long path segment")
        return cleaned

    @model_validator(mode="after")
    def _token_rules(self) -> EfentoCoapSettings:
        if any(not t.get_secret_value() for t in self.tokens):
            raise ValueError("tokens: an empty token would accept frames that carry none")
        return self

    @model_validator(mode="after")
    def _split_bounds(self) -> EfentoCoapSettings:
        if self.split_max_upload_bytes > self.split_max_bytes:
            raise ValueError(
                f"split_max_upload_bytes ({self.split_max_upload_bytes}) is over split_max_bytes "
                f"({self.split_max_bytes}), the bound of all uploads together: lower the first "
                "or raise the second"
            )
        return self

    @property
    def where(self) -> str:
        return f"sources.efento.{self.name}"

    def payload_codec(self) -> Codec:
        return efento.decode

    @property
    def tokens_required(self) -> bool:
        return bool(self.tokens) if self.require_token is None else self.require_token

    def routes(self) -> dict[tuple[str, ...], str]:
        """Uri-Path segments -> endpoint letter, for every prefix."""
        out: dict[tuple[str, ...], str] = {}
        for prefix in self.path_prefix:
            head = tuple(prefix.split("/")) if prefix else ()
            for endpoint in ENDPOINTS:
                out[(*head, endpoint)] = endpoint
        return out


def parse_listen(listen: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port); ValueError saying what is wrong."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"{listen!r}: give host:port, e.g. 0.0.0.0:5683 or [::]:5683")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"{listen!r}: the port must be 0..65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{listen!r}: {host!r} is not an IPv6 address") from None
    return host, port
