"""Settings of one Redis stream source ([[sources.redis_stream]]), checked once at start."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from fieldbridge.codecs.redis_stream import StreamBatchCodec, StreamEntryCodec
from fieldbridge.model import Codec
from fieldbridge.plugin import SourceSettings


class RedisStreamSettings(SourceSettings):
    """[[sources.redis_stream]]"""

    url: str = Field(default="redis://127.0.0.1:6379/0", pattern=r"^(redis|rediss|unix)://")
    password: SecretStr | None = None  # else the url's, if any
    stream: str = Field(default="measurement:values", min_length=1)
    device: str = Field(min_length=1)  # the identity every entry's message is stored under
    kind: str | None = "redis_stream"
    batch_size: int = Field(default=500, ge=1, le=10_000)  # entries per XREAD
    block_ms: int = Field(default=1000, ge=1, le=60_000)  # how long one XREAD waits for more
    timeout_s: float = Field(default=5.0, gt=0)  # connect and each command, beyond block_ms
    max_backoff: float = Field(default=30.0, gt=0)  # seconds, cap of the reconnect back-off
    # With no saved cursor yet: a Redis key holding where another program stopped (the
    # MQTT-Handler's "mqtt_sender:last_id", "(" + entry id, or "-"): start after that entry,
    # so taking over from it resends nothing. Unset or missing: the stream's first entry.
    start_after_key: str | None = None
    # "entry": each entry is a message with its readings (queryable with `readings list`).
    # "batch": each XREAD batch is one message holding the entries as read, no reading rows:
    # the edge forwarder's shape (the mqtt-handler preset), several times faster.
    journal: Literal["entry", "batch"] = "entry"

    @field_validator("device")
    @classmethod
    def _printable(cls, device: str) -> str:
        if not device.isprintable():
            raise ValueError("device must be printable text (no control characters)")
        return device

    def payload_codec(self) -> Codec:
        if self.journal == "batch":
            return StreamBatchCodec(self.device, self.kind, self.batch_size)
        return StreamEntryCodec(self.device, self.kind)
