"""The registry of source and sink types, and the settings every plugin shares."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from fieldbridge.ingest import Ingest
    from fieldbridge.model import Codec
    from fieldbridge.sinks.base import Destination
    from fieldbridge.sources.access import StoreAccess
    from fieldbridge.sources.base import Source

# Built-in plugin modules; each registers itself on import. Adding a plugin is one line here.
BUILTIN_MODULES = (
    "fieldbridge.sinks.webhook",
    "fieldbridge.sources.mqtt",
    "fieldbridge.sinks.thingworx",
    "fieldbridge.sinks.thingsboard",
    "fieldbridge.sinks.influxdb",
    "fieldbridge.sinks.trapnz",
    "fieldbridge.sinks.dunedb",
    "fieldbridge.sinks.mqtt",
    "fieldbridge.sources.coap",
    "fieldbridge.sources.http",
    "fieldbridge.sources.redis_stream",
)


class PluginSettings(BaseModel):
    """Settings every source and sink has."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")

    def resolve(self, sections: Mapping[str, Any]) -> list[str]:
        """Take what the entry names in other sections of the settings (e.g. a DUNE DB sink's
        [dunedb.environments.<name>]); return the problems found. Most name nothing."""
        return []


class SourceSettings(PluginSettings):
    """Settings every source has."""

    def http_paths(self) -> tuple[str, ...]:
        """Paths this source serves on fieldbridge's HTTP server ([http]); most serve none."""
        return ()

    def payload_codec(self) -> Codec | None:
        """The codec this source decodes its payloads with, to decode a quarantined one again
        (`quarantine reingest`); None: its payloads cannot be decoded again alone."""
        return None


class RouteSettings(BaseModel):
    """Which messages a sink takes; an empty list means all."""

    model_config = ConfigDict(extra="forbid")

    sources: list[str] = Field(default_factory=list)
    kinds: list[str] = Field(default_factory=list)
    flag: str | None = None  # a device flag that must be on, e.g. "upload_trapnz"


class SinkSettings(PluginSettings):
    """Settings every sink has."""

    enabled: bool = True
    interval: float = Field(default=0.0, ge=0)  # send at most every N seconds
    batch_size: int = Field(default=500, ge=1, le=100_000)
    max_backoff: float = Field(default=300.0, gt=0)  # seconds, cap of the retry back-off
    route: RouteSettings = Field(default_factory=RouteSettings)


SrcT = TypeVar("SrcT", bound=SourceSettings)
SnkT = TypeVar("SnkT", bound=SinkSettings)


@dataclass(frozen=True)
class SourceType(Generic[SrcT]):
    """A registered source type: its settings model and how to build one (from its settings,
    the ingest it hands payloads to, and what of the store its answers may read)."""

    settings: type[SrcT]
    build: Callable[[SrcT, Ingest, StoreAccess], Source]
    # Entries (settings as in a file) this type adds when fieldbridge runs without a settings
    # file, so the default run is useful at once (e.g. an MQTT source with an embedded broker).
    default_run: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class SinkType(Generic[SnkT]):
    """A registered sink type: its settings model and how to build its destination."""

    settings: type[SnkT]
    build: Callable[[SnkT], Destination]
    # Entries this type adds when fieldbridge runs without a settings file (see SourceType).
    default_run: tuple[Mapping[str, Any], ...] = ()


SOURCE_TYPES: dict[str, SourceType[Any]] = {}
SINK_TYPES: dict[str, SinkType[Any]] = {}


def register_source(type_name: str, source_type: SourceType[Any]) -> None:
    SOURCE_TYPES[type_name] = source_type


def register_sink(type_name: str, sink_type: SinkType[Any]) -> None:
    SINK_TYPES[type_name] = sink_type


def load_builtins() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
