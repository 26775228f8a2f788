"""Text made safe to show on a terminal or in a reason: unprintable characters become escapes."""

from __future__ import annotations

import unicodedata

# What str.isprintable() refuses, by Unicode category, in the words a reason uses.
KINDS = {
    "Cc": "control character",
    "Cf": "invisible format character",
    "Cs": "surrogate",
    "Co": "private-use character",
    "Cn": "unassigned code point",
    "Zs": "space other than U+0020",
    "Zl": "line separator",
    "Zp": "paragraph separator",
}


def escape(text: str, keep: str = "") -> str:
    """`text` with every character str.isprintable() refuses (except those in `keep`, e.g.
    "\\n") written as \\xNN, \\uNNNN or \\UNNNNNNNN, so ESC, bidi overrides and zero-width
    characters show instead of acting."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch in keep else _escape_char(ch) for ch in text)


def first_unprintable(text: str) -> int | None:
    """The index of the first character str.isprintable() refuses, or None."""
    if text.isprintable():
        return None
    return next(i for i, ch in enumerate(text) if not ch.isprintable())


def describe(ch: str) -> str:
    """One character for a reason, never raw: e.g. "control character U+001B"."""
    kind = KINDS.get(unicodedata.category(ch), "unprintable character")
    return f"{kind} U+{ord(ch):04X}"


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
