"""Settings of a publishing MQTT connection and of one MQTT sink ([[sinks.mqtt]])."""

from __future__ import annotations

import re
import ssl
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from fieldbridge.errors import ConfigError
from fieldbridge.plugin import SinkSettings

SCHEMES = {"mqtt": (False, 1883), "mqtts": (True, 8883)}
# The MQTT-Handler's topics are Python %-templates ("%(device_uuid)s"); ours use {name}.
PERCENT_FIELD = re.compile(r"%\((\w+)\)s")
PRESETS = ("json", "mqtt-handler", "smartcitizen")
# A Smart Citizen device token: 6 lowercase alphanumerics (the platform issues no other).
SMARTCITIZEN_TOKEN = re.compile(r"[a-z0-9]{6}")


def braces(template: str) -> str:
    """A topic template in {name} form; the seed's %(name)s form is taken as well."""
    return PERCENT_FIELD.sub(r"{\1}", template)


class Identity(BaseModel):
    """Who this edge device is (the MQTT-Handler's [balena] section / BALENA_* variables):
    in topics as {device_uuid}, {device_type}, {app_id}, {app_name}, and in its payloads."""

    model_config = ConfigDict(extra="forbid")

    device_uuid: str = ""
    device_type: str = ""
    app_id: str = ""
    app_name: str = ""

    def fields(self) -> dict[str, str]:
        return self.model_dump()


class BrokerSettings(BaseModel):
    """One broker to publish to: TLS and credentials are part of the first CONNECT."""

    model_config = ConfigDict(extra="forbid")

    url: str = "mqtt://127.0.0.1:1883"
    client_id: str | None = None  # default: fieldbridge-<name>
    username: str | None = None
    password: SecretStr | None = None
    # TLS: mqtts:// or any of these set. ca_file: the CAs to trust (default: the system's).
    ca_file: str | None = None
    cert_file: str | None = None  # client certificate (with key_file)
    key_file: str | None = None
    tls_insecure: bool = False  # accept any server certificate (testing only)
    keepalive: int = Field(default=60, ge=5, le=65535)
    timeout_s: float = Field(default=10.0, gt=0)  # connect, CONNACK, each PUBACK wait

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES or not parts.hostname:
            raise ValueError(f"{url!r}: use mqtt://host[:port] or mqtts://host[:port]")
        return url

    @model_validator(mode="after")
    def _key_with_cert(self) -> BrokerSettings:
        if self.key_file and not self.cert_file:
            raise ValueError("key_file is the client certificate's key: set cert_file as well")
        return self

    @property
    def host(self) -> str:
        host = urlsplit(self.url).hostname
        assert host is not None  # checked by _url
        return host

    @property
    def uses_tls(self) -> bool:
        scheme = urlsplit(self.url).scheme
        return SCHEMES[scheme][0] or bool(self.ca_file or self.cert_file or self.tls_insecure)

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or SCHEMES[parts.scheme][1]

    def tls(self, where: str) -> ssl.SSLContext | None:
        """The TLS context, or ConfigError naming the file at fault (`where`: the section)."""
        if not self.uses_tls:
            return None
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"{where}.ca_file {self.ca_file}: not a CA certificate: {exc}"
            ) from None
        if self.cert_file:
            try:
                context.load_cert_chain(self.cert_file, self.key_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"{where}.cert_file/key_file: cannot load the client certificate and key: {exc}"
                ) from None
        if self.tls_insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


class RedisKeys(BaseModel):
    """The MQTT-Handler's Redis keys the mqtt-handler preset keeps working."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(default="redis://127.0.0.1:6379/0", pattern=r"^(redis|rediss|unix)://")
    password: SecretStr | None = None
    prefix: str = "mqtt_sender"  # <prefix>:last_id, <prefix>:enabled, <prefix>:interval
    timeout_s: float = Field(default=5.0, gt=0)


class MqttSinkSettings(SinkSettings):
    """[[sinks.mqtt]]"""

    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    preset: Literal["json", "mqtt-handler", "smartcitizen"] = "json"
    # Placeholders: {device}, {kind}, {source}, {token} (smartcitizen), and the identity's
    # {device_uuid}, {device_type}, {app_id}, {app_name}; %(name)s works as well.
    topic: str | None = None  # default: per preset
    qos: Literal[0, 1] = 1
    retain: bool = False
    identity: Identity = Field(default_factory=Identity)
    redis: RedisKeys | None = None  # mqtt-handler: last_id written, enabled/interval read
    # mqtt-handler: at most this many entries in one values message (the MQTT-Handler sent
    # its whole backlog in one)
    entries_per_message: int = Field(default=500, ge=1, le=10_000)
    # smartcitizen: a device's token is its attribute `token_attribute`, else `tokens[device]`;
    # a quantity's sensor id is `sensor_ids[quantity]` (quantities without one are not sent).
    token_attribute: str = "smartcitizen_token"
    tokens: dict[str, str] = Field(default_factory=dict)
    sensor_ids: dict[str, int | str] = Field(default_factory=dict)

    @field_validator("topic")
    @classmethod
    def _topic(cls, topic: str | None) -> str | None:
        if topic is None:
            return None
        topic = braces(topic)
        if not topic or "+" in topic or "#" in topic:
            raise ValueError(f"{topic!r}: a topic to publish to, without wildcards")
        return topic

    @model_validator(mode="after")
    def _preset_needs(self) -> MqttSinkSettings:
        if self.preset != "smartcitizen":
            return self
        if not self.sensor_ids:
            raise ValueError(
                "preset smartcitizen needs sensor_ids: the Smart Citizen sensor id of each "
                'quantity to send, e.g. sensor_ids = { battery = 10, temperature = "55" }'
            )
        if self.qos != 1:
            raise ValueError("preset smartcitizen publishes with QoS 1: the platform requires it")
        for device, token in self.tokens.items():
            if not SMARTCITIZEN_TOKEN.fullmatch(token):
                raise ValueError(
                    f"tokens.{device}: {token!r} is not a Smart Citizen device token "
                    "(6 lowercase letters and digits)"
                )
        for quantity, sensor in self.sensor_ids.items():
            problem = smartcitizen_sensor_problem(sensor)
            if problem is not None:
                raise ValueError(f"sensor_ids.{quantity}: {problem}")
        return self

    @property
    def topic_template(self) -> str:
        if self.topic is not None:
            return self.topic
        return {
            "json": "fieldbridge/{device}",
            "mqtt-handler": "devices/{device_uuid}/values",
            "smartcitizen": "device/sck/{token}/readings",
        }[self.preset]

    @property
    def client_id(self) -> str:
        return self.broker.client_id or f"fieldbridge-{self.name}"


def smartcitizen_sensor_problem(sensor: int | str) -> str | None:
    """Why the platform would skip every reading sent with this sensor id or key, or None.

    It takes an integer, or text holding a digit, for a sensor id (so a key with a digit
    never matches a key), and strips non-ASCII from the payload."""
    if isinstance(sensor, int):
        return None if sensor >= 0 else f"{sensor} is not a sensor id"
    if not sensor or not sensor.isascii() or not sensor.isprintable():
        return f"{sensor!r}: a sensor key is printable ASCII (the platform strips the rest)"
    if sensor.isdigit():
        return None
    if any(c.isdigit() for c in sensor):
        return (
            f"{sensor!r}: the platform takes text with a digit for a sensor id, never a key; "
            "give the numeric sensor id"
        )
    return None
