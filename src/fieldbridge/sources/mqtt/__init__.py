"""MQTT source ([[sources.mqtt]]): a persistent subscription, each QoS 1 message acknowledged
only after it is committed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fieldbridge.plugin import SourceType, register_source
from fieldbridge.sources.mqtt.settings import MqttSettings
from fieldbridge.sources.mqtt.source import MqttSource

if TYPE_CHECKING:
    from fieldbridge.ingest import Ingest


def build(settings: MqttSettings, ingest: Ingest) -> MqttSource:
    return MqttSource(settings, ingest)


register_source("mqtt", SourceType(MqttSettings, build))
