"""The trap network of seed 000 (gateways, repeaters, nodes, teams, trap events), codec "trapnet".

Public API: `build(options) -> Codec` (the factory in CODECS), `KIND`, `TRAP_EVENT`, and
`name_fields` (used by the commit to name CSV values through a node's message type).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fieldbridge.codecs.options import check_options
from fieldbridge.codecs.trapnet.codec import KIND, TRAP_EVENT, TrapNetCodec
from fieldbridge.codecs.trapnet.naming import name_fields
from fieldbridge.model import Codec

__all__ = ["KIND", "TRAP_EVENT", "TrapNetCodec", "build", "name_fields"]


class TrapNetOptions(BaseModel):
    """codec_options of codec "trapnet"."""

    model_config = ConfigDict(extra="forbid")

    # The first topic level of the network's own families (Status, Gateway, Network, Node).
    prefix: str = Field(default="AKLC", pattern=r"^[^/+#\x00]{1,64}$")
    # The value that is a node's battery level (the original's per-node battName, default VBat).
    battery_key: str = Field(default="VBat", min_length=1, max_length=64)


def build(options: Mapping[str, Any]) -> Codec:
    """The codec for a source's codec_options; ValueError names a bad option."""
    opts = check_options(TrapNetOptions, options)
    return TrapNetCodec(opts.prefix, opts.battery_key)
