"""Efento NB-IoT sensors: protobuf payloads of /m, /i and /c, and configuration downlinks.

Public API (other modules code against exactly these names):
  decode(payload, meta, received_at) -> list[Decoded]   the Codec, registered as "efento"
  to_json(endpoint, payload, *, seed_compat=False)     the seed server's JSON of a frame
  summary(endpoint, payload) -> FrameSummary           serial, hash, split info, cloud token
  encode_config(fields) -> bytes                       a ProtoConfig downlink
  changes_configuration(payload) -> bool               whether a downlink changes the hash
  answer_payload(downlinks, now, configuration_request=) -> bytes | None   a 2.01's payload
  is_config(payload) -> bool                           whether a payload is a ProtoConfig
  SplitUploads(max_age, ...), part_index(payload)      split /c uploads put back together
  HASH_ATTRIBUTE                                       the device attribute of the /c hash
  endpoint_of(path) -> "m" | "i" | "c"                 the endpoint a path names (DecodeError)
"""

from fieldbridge.codecs.efento.codec import HASH_ATTRIBUTE, KIND, KIND_CONFIG_PART, decode
from fieldbridge.codecs.efento.downlink import (
    answer_payload,
    changes_configuration,
    encode_config,
    is_config,
)
from fieldbridge.codecs.efento.frames import Endpoint, FrameSummary, endpoint_of, summary
from fieldbridge.codecs.efento.seed_json import to_json
from fieldbridge.codecs.efento.splits import (
    Incomplete,
    Missing,
    Part,
    Refused,
    SplitUploads,
    Whole,
    part_index,
)

__all__ = [
    "HASH_ATTRIBUTE",
    "KIND",
    "KIND_CONFIG_PART",
    "Endpoint",
    "FrameSummary",
    "Incomplete",
    "Missing",
    "Part",
    "Refused",
    "SplitUploads",
    "Whole",
    "answer_payload",
    "changes_configuration",
    "decode",
    "encode_config",
    "endpoint_of",
    "is_config",
    "part_index",
    "summary",
    "to_json",
]
