"""What a source plugin implements."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from starlette.requests import Request
from starlette.responses import Response


class Source(Protocol):
    """A transport. Entering starts accepting; leaving stops accepting and waits for
    every payload it handed to ingest to be answered."""

    name: str

    async def __aenter__(self) -> Source: ...

    async def __aexit__(self, *exc_info: object) -> None: ...


@dataclass(frozen=True, slots=True)
class HttpRoute:
    """An endpoint a source serves on fieldbridge's HTTP server."""

    path: str
    methods: tuple[str, ...]
    endpoint: Callable[[Request], Awaitable[Response]]


@runtime_checkable
class ServesHttp(Protocol):
    """A source whose transport is fieldbridge's HTTP server ([http]): the server mounts its
    routes, behind http.tokens, and is stopped before the source is left."""

    http_routes: tuple[HttpRoute, ...]
