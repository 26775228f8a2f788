"""Redis stream source ([[sources.redis_stream]]): a stream's entries as messages of one
device, read after a cursor saved once they are committed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fieldbridge.plugin import SourceType, register_source
from fieldbridge.sources.redis_stream.settings import RedisStreamSettings
from fieldbridge.sources.redis_stream.source import RedisStreamSource, StreamStats

if TYPE_CHECKING:
    from fieldbridge.ingest import Ingest
    from fieldbridge.sources.access import StoreAccess

__all__ = ["RedisStreamSettings", "RedisStreamSource", "StreamStats", "build"]


def build(settings: RedisStreamSettings, ingest: Ingest, access: StoreAccess) -> RedisStreamSource:
    return RedisStreamSource(settings, ingest, access.cursors)


register_source("redis_stream", SourceType(RedisStreamSettings, build))
