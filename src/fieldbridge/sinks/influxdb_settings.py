"""[[sinks.influxdb]] settings: where InfluxDB is, which API (v1 database or v2 bucket), naming."""

from __future__ import annotations

from typing import Literal

from pydantic import AnyHttpUrl, Field, SecretStr, field_validator, model_validator

from fieldbridge.sinks.http_client import HttpSinkSettings
from fieldbridge.sinks.influxdb_lines import TAG_NAMES, TEMPLATE_NAMES, Layout, template_names

MAX_LINES = 5_000  # per request: InfluxDB's own batching advice (spec §4.2)


class InfluxDBSettings(HttpSinkSettings):
    """[[sinks.influxdb]]"""

    url: AnyHttpUrl
    # v1: POST /write?db=...
    database: str | None = Field(default=None, min_length=1)
    retention_policy: str | None = Field(default=None, min_length=1)
    username: str | None = None
    password: SecretStr | None = None
    # v2: POST /api/v2/write?org=...&bucket=...
    org: str | None = Field(default=None, min_length=1)
    bucket: str | None = Field(default=None, min_length=1)
    token: SecretStr | None = None

    precision: Literal["s", "ms", "us", "ns"] = "ms"
    measurement: str = Field(default="{quantity}", min_length=1)
    field: str = Field(default="value", min_length=1)
    tags: list[str] = Field(default_factory=lambda: ["device", "kind", "channel", "team"])
    static_tags: dict[str, str] = Field(default_factory=dict)
    lines_per_request: int = Field(default=MAX_LINES, ge=1, le=MAX_LINES)
    max_request_bytes: int = Field(default=10_000_000, ge=4096, le=25_000_000)
    max_in_flight: int = Field(default=4, ge=1, le=16)
    gzip: bool = True
    batch_size: int = Field(default=5_000, ge=1, le=100_000)  # messages read per batch

    @field_validator("tags")
    @classmethod
    def _known_tags(cls, tags: list[str]) -> list[str]:
        unknown = sorted(set(tags) - set(TAG_NAMES))
        if unknown:
            raise ValueError(f"unknown tag {unknown[0]!r}; choose from {', '.join(TAG_NAMES)}")
        return tags

    @field_validator("measurement", "field")
    @classmethod
    def _template(cls, template: str) -> str:
        try:
            names = template_names(template)
        except ValueError as exc:
            raise ValueError(f"{template!r}: {exc} (write {{{{ and }}}} for braces)") from exc
        unknown = sorted(names - TEMPLATE_NAMES)
        if unknown:
            raise ValueError(
                f"{template!r}: unknown name {{{unknown[0]}}}; "
                f"choose from {', '.join('{' + n + '}' for n in sorted(TEMPLATE_NAMES))}"
            )
        return template

    @model_validator(mode="after")
    def _one_api(self) -> InfluxDBSettings:
        v2 = [n for n in ("org", "bucket", "token") if getattr(self, n) is not None]
        if self.database is None and not v2:
            raise ValueError(
                "database: set `database` for InfluxDB 1.x, or `org`, `bucket` and `token` "
                "for InfluxDB 2.x / Cloud"
            )
        if self.database is not None and v2:
            raise ValueError(
                f"database: set either `database` (1.x) or {', '.join(v2)} (2.x), not both"
            )
        if v2:
            missing = [n for n in ("org", "bucket", "token") if getattr(self, n) is None]
            if missing:
                raise ValueError(f"{missing[0]}: InfluxDB 2.x needs org, bucket and token")
            if self.username is not None or self.password is not None:
                raise ValueError("username: 2.x authenticates with `token` only")
        if (self.username is None) != (self.password is None):
            raise ValueError("password: give both `username` and `password`, or neither")
        return self

    @property
    def v2(self) -> bool:
        return self.bucket is not None

    def layout(self) -> Layout:
        return Layout(
            measurement=self.measurement,
            field=self.field,
            tags=tuple(self.tags),
            static_tags=tuple(self.static_tags.items()),
            precision=self.precision,
        )

    def uses_team(self) -> bool:
        return "team" in self.tags or "team" in template_names(self.measurement + self.field)
