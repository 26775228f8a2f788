"""Smart Citizen Kits over MQTT (`device/sck/<token>/...`), registered as codec "smartcitizen".

Public API: `build(options) -> Codec` (the factory in CODECS), `decode` (the codec with no
options), `KIND`, and `builtin()` (the shipped sensor catalogue).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fieldbridge.codecs.options import check_options
from fieldbridge.codecs.smartcitizen.catalogue import Sensor, builtin
from fieldbridge.codecs.smartcitizen.codec import KIND, SmartCitizenCodec
from fieldbridge.model import Codec

__all__ = ["KIND", "SmartCitizenCodec", "build", "builtin", "decode"]

QUANTITY = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}", re.ASCII)


class SensorOption(BaseModel):
    """A catalogue entry added or replaced in codec_options.sensors."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=f"^{QUANTITY.pattern}$")
    unit: str | None = Field(default=None, max_length=32)


class SmartCitizenOptions(BaseModel):
    """codec_options of codec "smartcitizen"."""

    model_config = ConfigDict(extra="forbid")

    # Kit tokens accepted; None accepts every token. Others are quarantined.
    tokens: list[str] | None = None
    # Accept only kits already in the device registry (`fieldbridge devices add TOKEN`).
    registered_only: bool = False
    # Sensor id -> {name, unit}: added to (or replacing entries of) the shipped catalogue.
    sensors: dict[str, SensorOption] = Field(default_factory=dict)

    @field_validator("tokens")
    @classmethod
    def _plain_tokens(cls, tokens: list[str] | None) -> list[str] | None:
        if tokens is None:
            return None
        if not tokens:
            raise ValueError("list at least one token, or leave tokens out to accept every kit")
        for token in tokens:
            if not token or any(c in token for c in "/+#\x00") or len(token) > 64:
                raise ValueError(f"{token!r} is not a kit token (1 to 64 characters, no / + #)")
        return tokens

    @field_validator("sensors")
    @classmethod
    def _numeric_ids(cls, sensors: dict[str, SensorOption]) -> dict[str, SensorOption]:
        for sid in sensors:
            if not (sid.isascii() and sid.isdigit() and int(sid) <= 65535):
                raise ValueError(f"{sid!r} is not a sensor id (a number from 0 to 65535)")
        return sensors


def build(options: Mapping[str, Any]) -> Codec:
    """The codec for a source's codec_options; ValueError names a bad option."""
    opts = check_options(SmartCitizenOptions, options)
    catalogue: Mapping[int, Sensor] = builtin()
    if opts.sensors:
        added = {
            int(sid): Sensor(s.name, s.unit, "codec_options") for sid, s in opts.sensors.items()
        }
        catalogue = {**catalogue, **added}
    tokens = frozenset(opts.tokens) if opts.tokens is not None else None
    return SmartCitizenCodec(catalogue, tokens=tokens, registered_only=opts.registered_only)


decode: Codec = SmartCitizenCodec(builtin())
