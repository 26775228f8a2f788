"""Webhook sink: POSTs batches of messages as JSON to a URL."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import httpx
import orjson
from pydantic import AnyHttpUrl, Field, SecretStr

from fieldbridge.model import JournalEntry
from fieldbridge.plugin import SinkType, register_sink
from fieldbridge.reading_json import reading_json
from fieldbridge.sinks.http_client import HttpDestination, HttpSinkSettings, sink_client
from fieldbridge.sinks.http_errors import check_response, transport_failure
from fieldbridge.timefmt import iso

SCHEMA = "fieldbridge.webhook/1"


class WebhookSettings(HttpSinkSettings):
    """[[sinks.webhook]]"""

    url: AnyHttpUrl
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    include_payload: bool = False


def render_batch(sink: str, entries: Sequence[JournalEntry], include_payload: bool) -> bytes:
    """The JSON body of one POST (schema fieldbridge.webhook/1, see docs)."""
    messages: list[dict[str, Any]] = []
    for e in entries:
        message: dict[str, Any] = {
            "id": e.id,
            "received_at": iso(e.received_at),
            "source": e.source,
            "device": e.device,
            "kind": e.kind,
            "meta": dict(e.meta),
            "readings": [reading_json(r) for r in e.readings],
        }
        if include_payload:
            message["payload_b64"] = base64.b64encode(e.payload).decode()
        messages.append(message)
    body = {
        "schema": SCHEMA,
        "sink": sink,
        "batch": {"first_id": entries[0].id, "last_id": entries[-1].id, "count": len(entries)},
        "messages": messages,
    }
    return orjson.dumps(body)


def idempotency_key(sink: str, entries: Sequence[JournalEntry]) -> str:
    return f"{sink}:{entries[0].id}-{entries[-1].id}"


class WebhookDestination(HttpDestination):
    """One POST per batch; `transport` replaces httpx's network transport (see sink_client)."""

    def __init__(
        self, settings: WebhookSettings, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.settings = settings
        self.wants_payload = settings.include_payload
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> WebhookDestination:
        headers = {k: v.get_secret_value() for k, v in self.settings.headers.items()}
        self._client = sink_client(self.settings, headers, transport=self._transport)
        return self

    async def send(self, entries: Sequence[JournalEntry]) -> None:
        assert self._client is not None, "use the destination inside `async with`"
        what = f"webhook {self.settings.name}"
        body = render_batch(self.settings.name, entries, self.settings.include_payload)
        try:
            response = await self._client.post(
                str(self.settings.url),
                content=body,
                headers={
                    "Content-Type": "application/json",
                    "Idempotency-Key": idempotency_key(self.settings.name, entries),
                },
            )
        except httpx.TransportError as exc:
            raise transport_failure(exc, what) from exc
        check_response(response, what)


register_sink("webhook", SinkType(WebhookSettings, WebhookDestination))
