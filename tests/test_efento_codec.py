"""The Efento codec: spec vectors, the seed frames, every measurement type, /c splits, downlinks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fieldbridge.codecs import CODECS
from fieldbridge.codecs.efento import decode, summary, to_json
from fieldbridge.errors import DecodeError

FIXTURES = Path(__file__).parent / "fixtures" / "efento"
VECTORS: list[dict[str, Any]] = json.loads((FIXTURES / "vectors.json").read_text())
SEED: list[dict[str, Any]] = json.loads((FIXTURES / "seed_frames.json").read_text())["frames"]
RECEIVED = 1_717_300_000.0


def seed_frame(endpoint: str) -> dict[str, Any]:
    return next(frame for frame in SEED if frame["endpoint"] == endpoint)


# --- public vectors and the seed ---------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector_decodes_to_its_expected_json_exactly(vector: dict[str, Any]) -> None:
    out = to_json(vector["endpoint"], bytes.fromhex(vector["hex"]))
    # Same values, same types (21.5 vs 45), same key order.
    assert json.dumps(out) == json.dumps(vector["expected"])


@pytest.mark.parametrize("endpoint", ["m", "i", "c"])
def test_seed_frames_in_seed_compat_mode_are_byte_identical_to_the_seed(endpoint: str) -> None:
    frame = seed_frame(endpoint)
    out = to_json(endpoint, bytes.fromhex(frame["hex"]), seed_compat=True)
    assert json.dumps(out) == frame["seed_output"]


def test_codec_is_registered_as_efento() -> None:
    codec = CODECS["efento"]({})
    assert codec is decode
    with pytest.raises(ValueError, match="takes no options"):
        CODECS["efento"]({"x": 1})


def test_unknown_endpoint_is_named() -> None:
    with pytest.raises(DecodeError, match="'t'"):
        decode(b"", {"endpoint": "t"}, RECEIVED)
    with pytest.raises(DecodeError, match="no 'endpoint'"):
        decode(b"", {}, RECEIVED)


def test_summary_of_the_seed_measurement() -> None:
    s = summary("/efento/m", bytes.fromhex(seed_frame("m")["hex"]))
    assert (s.serial, s.configuration_hash, s.split_info, s.cloud_token) == (
        "282C024156AF",
        119,
        None,
        None,
    )
