"""MQTT source ([[sources.mqtt]]): a persistent subscription, each QoS 1 message acknowledged
only after it is committed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fieldbridge.plugin import SourceType, register_source
from fieldbridge.sources.mqtt.monitor import TrapnetMonitor
from fieldbridge.sources.mqtt.settings import MqttSettings
from fieldbridge.sources.mqtt.source import MqttSource

if TYPE_CHECKING:
    from fieldbridge.ingest import Ingest
    from fieldbridge.sources.access import StoreAccess

__all__ = ["DEFAULT_RUN", "MqttSettings", "MqttSource", "build"]


def build(settings: MqttSettings, ingest: Ingest, access: StoreAccess) -> MqttSource:
    monitor = None
    if settings.monitor is not None:  # the trap network's monitor keeps liveness in the store
        monitor = TrapnetMonitor(settings, settings.monitor, access.liveness)
    return MqttSource(settings, ingest, monitor)  # PUBACKs need nothing of the store


# Without a settings file: generic JSON on sensors/<device>/data, Smart Citizen Kits and the
# trap network (seed 000, with its liveness monitor), on the broker at 127.0.0.1:1883, or on an
# embedded Mosquitto when none answers there.
DEFAULT_RUN = (
    {
        "name": "mqtt",
        "topics": ["sensors/+/data"],
        "codec": "json",
        "codec_options": {"device_topic_segment": 1, "timestamp_path": "ts"},
        "embedded_broker": "auto",
    },
    {
        "name": "smartcitizen",
        "topics": [
            "device/sck/+/readings",
            "device/sck/+/readings/raw",
            "device/sck/+/hello",
            "device/sck/+/info",
        ],
        "codec": "smartcitizen",
        "embedded_broker": "auto",
    },
    {
        "name": "trapnet",
        "topics": ["AKLC/#", "EnvironmentalServices/#"],
        "codec": "trapnet",
        "embedded_broker": "auto",
        "monitor": True,
    },
)

register_source("mqtt", SourceType(MqttSettings, build, DEFAULT_RUN))
