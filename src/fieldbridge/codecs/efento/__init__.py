"""Efento NB-IoT sensors: protobuf payloads of /m, /i and /c, and configuration downlinks.

Public API (other modules code against exactly these names):
  decode(payload, meta, received_at) -> list[Decoded]   the Codec, registered as "efento"
  to_json(endpoint, payload, *, seed_compat=False)     the seed server's JSON of a frame
  summary(endpoint, payload) -> FrameSummary           serial, hash, split info, cloud token
  encode_config(fields) -> bytes                       a ProtoConfig downlink
  changes_configuration(payload) -> bool               whether a downlink changes the hash
  endpoint_of(path) -> "m" | "i" | "c"                 the endpoint a path names (DecodeError)
"""

from fieldbridge.codecs.efento.codec import KIND, KIND_CONFIG_PART, decode
from fieldbridge.codecs.efento.downlink import changes_configuration, encode_config
from fieldbridge.codecs.efento.frames import Endpoint, FrameSummary, endpoint_of, summary
from fieldbridge.codecs.efento.seed_json import to_json

__all__ = [
    "KIND",
    "KIND_CONFIG_PART",
    "Endpoint",
    "FrameSummary",
    "changes_configuration",
    "decode",
    "encode_config",
    "endpoint_of",
    "summary",
    "to_json",
]
