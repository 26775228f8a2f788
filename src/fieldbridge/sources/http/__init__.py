"""HTTP source ([[sources.http]]): JSON payloads POSTed to fieldbridge's HTTP server, each
answered only after it is committed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fieldbridge.plugin import SourceType, register_source
from fieldbridge.sources.http.settings import HttpSourceSettings
from fieldbridge.sources.http.source import HttpSource

if TYPE_CHECKING:
    from fieldbridge.ingest import Ingest
    from fieldbridge.sources.access import StoreAccess

__all__ = ["HttpSource", "HttpSourceSettings", "build"]


def build(settings: HttpSourceSettings, ingest: Ingest, access: StoreAccess) -> HttpSource:
    return HttpSource(settings, ingest)  # an answer needs nothing of the store but the commit


register_source("http", SourceType(HttpSourceSettings, build))
