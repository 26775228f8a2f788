"""[sources.mqtt.monitor]: the trap network's monitor beside an MQTT source (see monitor.py)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class MonitorSettings(BaseModel):
    """[sources.mqtt.monitor] of an MQTT source with codec "trapnet"."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="fieldbridge", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    check_period_s: float = Field(default=60.0, gt=0)  # how often silent nodes are looked for
    status_period_min: float = Field(default=5.0, gt=0)  # the status JSON, as MqttStatusPeriod
    email_from: str = Field(default="fieldbridge@localhost", min_length=1)
    replies: bool = True  # answer a message's Reply key on <prefix>/Control/<node>
    publish_timeout_s: float = Field(default=10.0, gt=0)  # PUBACK of a notification request
