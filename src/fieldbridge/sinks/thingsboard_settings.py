"""[[sinks.thingsboard]] settings: the mode, where ThingsBoard is, and whose token is used."""

from __future__ import annotations

import ssl
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from fieldbridge.sinks.http_client import HttpSinkSettings

SCHEMES = {"gateway": ("mqtt", "mqtts"), "device": ("mqtt", "mqtts"), "http": ("http", "https")}
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883, "http": 80, "https": 443}


class ThingsBoardSettings(HttpSinkSettings):
    """[[sinks.thingsboard]]"""

    url: str = Field(min_length=1)  # mqtt(s)://host:port for gateway/device, http(s):// for http
    mode: Literal["gateway", "device", "http"] = "gateway"
    token: SecretStr | None = None  # the gateway device's access token (gateway mode)
    token_attribute: str = Field(default="thingsboard_token", min_length=1)  # device/http mode
    attributes: list[str] = Field(default_factory=list)  # registry attributes sent as client attrs
    max_connections: int = Field(default=8, ge=1, le=1000)  # device mode: open device connections
    max_payload: int = Field(default=65_536, ge=1024)  # bytes per publish or POST (TB's limit)

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise ValueError(
                f"{url!r}: give mqtt://host:port or mqtts://host:port (gateway, device mode) "
                "or http(s)://host:port (http mode)"
            )
        if parts.username or parts.password or parts.query:
            raise ValueError(f"{url!r}: no credentials or query in the url; set token instead")
        return url

    @model_validator(mode="after")
    def _mode_fits(self) -> ThingsBoardSettings:
        scheme = urlsplit(self.url).scheme
        if scheme not in SCHEMES[self.mode]:
            wanted = " or ".join(f"{s}://" for s in SCHEMES[self.mode])
            raise ValueError(f"url: mode {self.mode!r} needs a {wanted} url, not {scheme}://")
        if self.mode == "gateway" and not (self.token and self.token.get_secret_value()):
            raise ValueError(
                "token: gateway mode needs the access token of a ThingsBoard device with "
                "'Is gateway' on"
            )
        return self

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or DEFAULT_PORTS[parts.scheme]

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/")

    def tls(self) -> ssl.SSLContext | None:
        """The TLS context of an mqtts:// url (system CAs; verify_tls = false skips the check)."""
        if urlsplit(self.url).scheme != "mqtts":
            return None
        context = ssl.create_default_context()
        if not self.verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context
