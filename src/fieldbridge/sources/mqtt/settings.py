"""Settings of one MQTT source ([[sources.mqtt]]), checked once at start."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator

from fieldbridge.codecs import build_codec
from fieldbridge.errors import ConfigError
from fieldbridge.model import Codec
from fieldbridge.plugin import SourceSettings
from fieldbridge.sources.mqtt.monitor_settings import MonitorSettings
from fieldbridge.store.urls import mask_url
from fieldbridge.topics import check_filter

SCHEMES = {"mqtt": (False, 1883), "mqtts": (True, 8883)}
NEVER_EXPIRES = 0xFFFFFFFF  # MQTT 5's session expiry value for "never"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the broker is: host, port and whether to speak TLS."""

    host: str
    port: int
    tls: bool

    @property
    def loopback(self) -> bool:
        return self.host in LOOPBACK


class MqttSettings(SourceSettings):
    """[[sources.mqtt]]"""

    url: str = "mqtt://127.0.0.1:1883"
    client_id: str = "fieldbridge-{name}"
    username: str | None = None
    password: SecretStr | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    topics: list[str] = Field(min_length=1)
    qos: Literal[0, 1, 2] = 1
    codec: str = "json"
    codec_options: dict[str, Any] = Field(default_factory=dict)
    clean_session: bool = False
    session_expiry: int = Field(default=2_592_000, ge=0, le=NEVER_EXPIRES)
    keepalive: int = Field(default=60, ge=5, le=65535)
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    status_topic: str = "fieldbridge/{name}/status"
    max_backoff: float = Field(default=30.0, gt=0)
    embedded_broker: Literal["auto", "off"] = "off"
    monitor: MonitorSettings | None = None  # codec "trapnet": liveness, notifications, LWT

    _codec: Codec | None = PrivateAttr(default=None)

    @field_validator("monitor", mode="before")
    @classmethod
    def _monitor_switch(cls, value: object) -> object:
        """`monitor = true` is the monitor with its defaults; `false` is none."""
        if value is True:
            return {}
        if value is False:
            return None
        return value

    @field_validator("url")
    @classmethod
    def _known_url(cls, url: str) -> str:
        parse_url(url)
        return url

    @field_validator("topics")
    @classmethod
    def _valid_filters(cls, topics: list[str]) -> list[str]:
        for topic in topics:
            check_filter(topic)
        if len(set(topics)) != len(topics):
            raise ValueError("a topic filter is listed twice")
        return topics

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _file_exists(cls, path: str | None) -> str | None:
        if path is not None and not Path(path).is_file():
            raise ValueError(f"no such file: {path}")
        return path

    @model_validator(mode="after")
    def _consistent(self) -> MqttSettings:
        where = f"sources.mqtt.{self.name}"
        tls = parse_url(self.url).tls
        files = [k for k in ("ca_file", "cert_file", "key_file") if getattr(self, k)]
        if not tls and (files or self.tls_insecure):
            named = ", ".join(files or ["tls_insecure"])
            raise ValueError(f"{named} need TLS: use an mqtts:// url")
        if self.key_file and not self.cert_file:
            raise ValueError("key_file needs cert_file (the client certificate)")
        if self.monitor is not None and self.codec != "trapnet":
            raise ValueError('monitor: the trap-network monitor needs codec = "trapnet"')
        if self.password is not None and self.username is None:
            raise ValueError("password needs username")
        for key in ("client_id", "status_topic"):
            value = expand(getattr(self, key), self.name, key)
            setattr(self, key, value)
        if not self.client_id:
            raise ValueError("client_id must not be empty (a persistent session needs a fixed id)")
        if self.status_topic and any(c in self.status_topic for c in "+#"):
            raise ValueError("status_topic must be a plain topic, without + or #")
        try:
            self._codec = build_codec(self.codec, self.codec_options, setting=f"{where}.codec")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

    @property
    def endpoint(self) -> Endpoint:
        return parse_url(self.url)

    @property
    def decoder(self) -> Codec:
        """The configured codec (built and checked once, when the settings were validated)."""
        assert self._codec is not None
        return self._codec

    def payload_codec(self) -> Codec:
        return self.decoder

    @property
    def where(self) -> str:
        """How log lines and errors name this source's settings."""
        return f"sources.mqtt.{self.name}"


def parse_url(url: str) -> Endpoint:
    """mqtt://host[:port] or mqtts://host[:port]; a ValueError says what is wrong."""
    parts = urlsplit(url)
    shown = mask_url(url)  # errors are printed: never with a password or token in them
    if parts.scheme not in SCHEMES:
        raise ValueError(f"{shown!r}: the scheme must be mqtt:// or mqtts://")
    if parts.username or parts.password:
        raise ValueError("put credentials in username and password, not in the url")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{shown!r}: only mqtt[s]://host:port, no path or query")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{shown!r}: the port must be a number from 1 to 65535") from None
    if not parts.hostname:
        raise ValueError(f"{shown!r}: the host is missing")
    tls, default_port = SCHEMES[parts.scheme]
    return Endpoint(parts.hostname, port or default_port, tls)


def expand(template: str, name: str, key: str) -> str:
    """`template` with {name} (the source's name) and {hostname} filled in."""
    try:
        return template.format(name=name, hostname=socket.gethostname())
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"{key} {template!r}: only the placeholders {{name}} and {{hostname}} are known ({exc})"
        ) from None
