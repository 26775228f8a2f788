"""Opens redis-py asyncio clients the same way for every part that talks to a Redis."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

__all__ = ["RedisError", "open_redis", "shown"]


def open_redis(
    url: str, *, password: str | None, timeout: float, block_ms: int = 0, text: bool = False
) -> aioredis.Redis:
    """A client on `url` (redis://host:port/db) with a deadline on connect and every command.

    `block_ms` is the longest blocking read (XREAD BLOCK) it will make, added to the
    socket deadline. redis-py's own retries are off: the caller backs off and knows why.
    Replies are bytes (hiredis parses them), or with `text` str, decoded by the parser
    (invalid UTF-8 replaced) rather than value by value in Python.
    """
    return aioredis.Redis.from_url(
        url,
        password=password,  # None: the url's, if it has one
        socket_timeout=timeout + block_ms / 1000.0,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        decode_responses=text,
        encoding_errors="replace",
        health_check_interval=30,
    )


def shown(url: str) -> str:
    """The url without its password, for logs and errors."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at:
        return url
    user = creds.partition(":")[0]
    return f"{scheme}{sep}{user + ':***' if user else '***'}@{host}"
