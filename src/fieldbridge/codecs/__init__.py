"""Codecs: pure functions from payload bytes to decoded messages, registered by name.

Adding a codec is one module and one line in CODECS. A codec that takes settings registers a
factory that checks its options once, at startup, and returns the configured pure function.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fieldbridge.codecs import efento, http_json, json_mapping, smartcitizen, trapnet
from fieldbridge.errors import ConfigError
from fieldbridge.model import Codec

CodecFactory = Callable[[Mapping[str, Any]], Codec]
"""options -> codec; raises ValueError (or pydantic's ValidationError) for bad options."""


def plain(codec: Codec) -> CodecFactory:
    """The factory of a codec that takes no options."""

    def build(options: Mapping[str, Any]) -> Codec:
        if options:
            raise ValueError(f"takes no options, got {', '.join(sorted(options))}")
        return codec

    return build


CODECS: dict[str, CodecFactory] = {
    "http-json": plain(http_json.decode),
    "efento": plain(efento.decode),
    "smartcitizen": smartcitizen.build,
    "json": json_mapping.build,
    "trapnet": trapnet.build,
}


def build_codec(name: str, options: Mapping[str, Any], *, setting: str) -> Codec:
    """The configured codec `name`, or a ConfigError naming `setting` and what to change."""
    factory = CODECS.get(name)
    if factory is None:
        known = ", ".join(sorted(CODECS))
        raise ConfigError(f"{setting}: unknown codec {name!r} (known: {known})")
    try:
        return factory(options)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{setting} options for codec {name!r}: {exc}") from exc
