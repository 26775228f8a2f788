"""printable: text shown escaped, and unprintable characters described by code point."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fieldbridge.printable import describe, escape, first_unprintable


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("dev-1 Küche 温度", "dev-1 Küche 温度"),
        ("a\x1b[31mred", "a\\x1b[31mred"),
        ("\x00\x7f\x85", "\\x00\\x7f\\x85"),  # NUL, DEL, a C1 control
        ("adm\u202enimda", "adm\\u202enimda"),  # right-to-left override
        ("a\u200bb\ufeff", "a\\u200bb\\ufeff"),  # zero-width space, BOM
        ("a\u00a0b", "a\\xa0b"),  # no-break space
        ("\U000e0001", "\\U000e0001"),  # language tag (format)
        ("line\nnext", "line\\x0anext"),
    ],
)
def test_escape(text: str, shown: str) -> None:
    assert escape(text) == shown


def test_escape_can_keep_newlines() -> None:
    assert escape("a\nb\x1b", keep="\n") == "a\nb\\x1b"


def test_describe_and_first_unprintable() -> None:
    assert first_unprintable("plain text") is None
    assert first_unprintable("ab\u202ec\x1b") == 2
    assert describe("\x1b") == "control character U+001B"
    assert describe("\u202e") == "invisible format character U+202E"
    assert describe("\u00a0") == "space other than U+0020 U+00A0"
    assert describe("\ue000") == "private-use character U+E000"


@given(st.text())
def test_fuzz_escaped_text_is_printable(text: str) -> None:
    assert escape(text).isprintable()
    assert (first_unprintable(text) is None) == text.isprintable()
