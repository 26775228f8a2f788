"""What a source plugin implements."""

from __future__ import annotations

from typing import Protocol


class Source(Protocol):
    """A transport. Entering starts accepting; leaving stops accepting and waits for
    every payload it handed to ingest to be answered."""

    name: str

    async def __aenter__(self) -> Source: ...

    async def __aexit__(self, *exc_info: object) -> None: ...
