"""Codecs: pure functions from payload bytes to decoded messages, registered by name."""

from __future__ import annotations

from fieldbridge.codecs import http_json
from fieldbridge.model import Codec

CODECS: dict[str, Codec] = {
    "http-json": http_json.decode,
}
