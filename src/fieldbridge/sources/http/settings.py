"""Settings of one HTTP source ([[sources.http]]), checked once at start."""

from __future__ import annotations

from pydantic import Field, field_validator

from fieldbridge.codecs import http_json
from fieldbridge.model import Codec
from fieldbridge.plugin import SourceSettings

DEFAULT_NAME = "http"
DEFAULT_PATH = "/api/v1/ingest"
DEFAULT_MAX_BODY_BYTES = 1_048_576
# The HTTP server's own endpoints (web/server.py, web/spy.py): no source can take them.
SERVER_PATHS = frozenset({"/healthz", "/metrics", "/api/v1/spy"})


class HttpSourceSettings(SourceSettings):
    """[[sources.http]]"""

    path: str = Field(default=DEFAULT_PATH, pattern=r"^(/[A-Za-z0-9._~-]+)+$")
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1)

    @field_validator("path")
    @classmethod
    def _not_the_servers(cls, path: str) -> str:
        if path in SERVER_PATHS:
            raise ValueError(f"{path} is one of the HTTP server's own endpoints; choose another")
        return path

    def http_paths(self) -> tuple[str, ...]:
        return (self.path,)

    def payload_codec(self) -> Codec:
        return http_json.decode
