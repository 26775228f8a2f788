"""Settings of remote control over MQTT ([control]), checked once at start."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from fieldbridge.sinks.mqtt_settings import BrokerSettings, Identity, braces

DEFAULT_ALLOW = ["mqtt_sender:*", "measurement:*"]


class ControlRedis(BaseModel):
    """The Redis whose keys get_config/set_config read and write, and whose stream
    send_measurements publishes from."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(default="redis://127.0.0.1:6379/0", pattern=r"^(redis|rediss|unix)://")
    password: SecretStr | None = None
    stream: str = "measurement:values"
    timeout_s: float = Field(default=5.0, gt=0)


class ControlSettings(BaseModel):
    """[control]: commands on the broadcast and request topics, replies on the response topic
    (the MQTT-Handler's protocol, integrations.md §7.2, plus status, sinks and devices)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    identity: Identity = Field(default_factory=Identity)
    # Templates: {device_uuid}, {device_type}, {app_id}, {app_name} (or %(name)s).
    topic_broadcast: str = "devices/all/commands"
    topic_request: str = "devices/{device_uuid}/commands"
    topic_response: str = "devices/{device_uuid}/responses"
    topic_values: str = "devices/{device_uuid}/values"
    redis: ControlRedis = Field(default_factory=ControlRedis)
    # get_config/set_config reach only keys matching one of these (fnmatch patterns).
    allow_keys: list[str] = Field(default_factory=lambda: list(DEFAULT_ALLOW))
    # Shared secret: when set, every command must carry "ts" (Unix seconds) and "hmac" (hex
    # HMAC-SHA256 of the command without "hmac", as sorted compact JSON); off by default, as
    # the MQTT-Handler had none. Recommended (docs/integrations/edge-mqtt-handler.md).
    hmac_secret: SecretStr | None = None
    hmac_max_skew_s: float = Field(default=300.0, gt=0)
    max_payload_bytes: int = Field(default=65_536, ge=256)
    send_max_entries: int = Field(default=10_000, ge=1)  # send_measurements: at most this many
    send_batch: int = Field(default=500, ge=1, le=10_000)  # entries per values message
    # reboot: after the reply, run this (e.g. ["/usr/src/app/reboot.sh"]), then stop
    # gracefully and exit with reboot_exit_code, which a supervisor (Docker/balena restart
    # policy, systemd Restart=on-failure) restarts on.
    reboot_command: list[str] = Field(default_factory=list)
    reboot_command_timeout_s: float = Field(default=30.0, gt=0)
    reboot_exit_code: int = Field(default=75, ge=1, le=255)  # EX_TEMPFAIL

    @field_validator("topic_broadcast", "topic_request", "topic_response", "topic_values")
    @classmethod
    def _topic(cls, topic: str) -> str:
        return braces(topic)

    def topic(self, template: str) -> str:
        return template.format_map(self.identity.fields())
