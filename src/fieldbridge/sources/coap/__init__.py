"""Efento CoAP source ([[sources.efento]]): sensor frames stored before their 2.01, with
configuration downlinks in the answer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fieldbridge.plugin import SourceType, register_source
from fieldbridge.sources.coap.server import EfentoCoapSource
from fieldbridge.sources.coap.settings import EfentoCoapSettings

if TYPE_CHECKING:
    from fieldbridge.ingest import Ingest
    from fieldbridge.sources.access import StoreAccess


def build(settings: EfentoCoapSettings, ingest: Ingest, access: StoreAccess) -> EfentoCoapSource:
    return EfentoCoapSource(settings, ingest, access)


# Without a settings file: Efento sensors (and `fieldbridge simulate`) on this machine only.
DEFAULT_RUN = ({"name": "efento", "listen": "127.0.0.1:5683"},)

register_source("efento", SourceType(EfentoCoapSettings, build, DEFAULT_RUN))
