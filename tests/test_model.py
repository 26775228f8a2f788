"""model: the one device id rule every codec's output passes through."""

from __future__ import annotations

import pytest

from fieldbridge.errors import DecodeError
from fieldbridge.model import Decoded, check_device_id


@pytest.mark.parametrize(
    ("device", "reason"),
    [
        (
            "a\x1b[31m",
            "device id 'a\\x1b[31m' contains the control character U+001B at position 1",
        ),
        ("\x7fdel", "device id '\\x7fdel' contains the control character U+007F at position 0"),
        ("c1\x9b", "device id 'c1\\x9b' contains the control character U+009B at position 2"),
        ("adm\u202eni", "contains the invisible format character U+202E at position 3"),
        ("a\u2066b", "contains the invisible format character U+2066 at position 1"),
        ("dev\u200b1", "contains the invisible format character U+200B at position 3"),
        ("dev\u00a01", "contains the space other than U+0020 U+00A0 at position 3"),
        ("line\u2028", "contains the line separator U+2028 at position 4"),
        ("x\ue000", "contains the private-use character U+E000 at position 1"),
    ],
)
def test_a_decoded_message_refuses_an_unprintable_device_id(device: str, reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        Decoded(device)
    assert reason in caught.value.reason
    assert caught.value.cause == "bad_device_id"
    assert not caught.value.malformed
    assert caught.value.reason.isprintable()  # the character is named, never printed


def test_printable_ids_pass_whatever_the_script() -> None:
    for device in ("dev-1", "Küche 2", "温度计", "sensor 🌡", "70B3D5E75E00A1B2"):
        assert Decoded(device).device == device


def test_a_long_id_is_quoted_shortened_and_the_place_named() -> None:
    with pytest.raises(DecodeError) as caught:
        check_device_id("x" * 300 + "\x07", "topic level 1")
    assert caught.value.reason.startswith("topic level 1 '" + "x" * 80 + "...' contains the ")
    assert "U+0007 at position 300" in caught.value.reason
