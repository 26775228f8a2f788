"""Strict JSON parsing for codecs: orjson's speed, with refusals that name the place.

Duplicate keys are refused and a body that is not UTF-8 is located by byte offset.

orjson is the fast path but keeps the last of duplicate keys without a word; the standard
library's json reports every object's pairs (object_pairs_hook) but is several times slower.
So orjson parses, and a check costing one C-speed serialisation decides whether json has to
look: outside strings a colon follows every key, and orjson writes a colon inside a string as
a colon, so unless the payload has \\u escapes (which can spell a colon), re-serialising what
orjson kept gives exactly as many colons as the payload iff no key was dropped.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from fieldbridge.codecs.jsonpath import Path, show
from fieldbridge.errors import DecodeError
from fieldbridge.printable import escape

SHOWN_KEY = 60  # characters of a duplicate key quoted in a reason


def loads(payload: bytes, subject: str) -> Any:
    """The JSON value of `payload`, or a DecodeError naming `subject` ("body", "payload").

    Refuses invalid UTF-8 (malformed, with the byte and its offset) and an object with the
    same key twice (the key and the object's place named).
    """
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise _syntax(payload, subject, exc) from None
    colons = payload.count(b":")
    if colons > 1:  # two keys at least: a duplicate is possible
        try:
            kept = orjson.dumps(data).count(b":")
        except orjson.JSONEncodeError:  # deeper than orjson writes (254 levels)
            kept = -1
        # find, not `in`: bytes.__contains__ first tries the needle as an int (a raised and
        # cleared TypeError), which costs more than the search.
        if kept != colons or payload.find(b"\\u") >= 0:
            _refuse_duplicates(payload, subject)
    return data


def _syntax(payload: bytes, subject: str, exc: orjson.JSONDecodeError) -> DecodeError:
    """Why orjson refused: bytes that are not UTF-8 named by offset, else orjson's words."""
    try:
        payload.decode()
    except UnicodeDecodeError as bad:
        if bad.reason == "unexpected end of data":
            reason = f"{subject} is not UTF-8: it ends inside a character (offset {bad.start})"
        else:
            byte = payload[bad.start]
            reason = f"{subject} is not UTF-8: invalid byte 0x{byte:02x} at offset {bad.start}"
        return DecodeError(reason, malformed=True, cause="not_utf8")
    return DecodeError(f"{subject} is not valid JSON: {exc}", malformed=True)


class _Duplicate(Exception):
    """Raised by the object hook at the first object with a key twice."""


class _Pairs(list[tuple[str, Any]]):
    """An object's pairs as written, duplicates kept (only for finding the place)."""


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        raise _Duplicate
    return data


def _refuse_duplicates(payload: bytes, subject: str) -> None:
    """Parse again with json's pair hook; refuse the first object holding a key twice."""
    text = payload.decode()  # orjson accepted it, so it is UTF-8
    try:
        json.loads(text, object_pairs_hook=_unique)
        return
    except _Duplicate:
        try:
            found = _first_duplicate(json.loads(text, object_pairs_hook=_Pairs))
        except RecursionError:
            found = None
    except RecursionError:
        found = None
    if found is None:  # json's recursion limit is below orjson's nesting limit of 1024
        raise DecodeError(
            f"{subject} nests too deeply to check for duplicate keys; send fewer levels"
        )
    place, key = found
    where = escape(show(place)) if place else subject
    shown = escape(key[:SHOWN_KEY]) + ("..." if len(key) > SHOWN_KEY else "")
    raise DecodeError(
        f"{where}: key '{shown}' appears twice; send each key once in an object",
        cause="duplicate_key",
    )


def _first_duplicate(value: object) -> tuple[Path, str] | None:
    """The place of the first object (in document order) with a repeated key, and that key."""
    stack: list[tuple[Path, object]] = [((), value)]
    while stack:
        place, item = stack.pop()
        if isinstance(item, _Pairs):
            seen: set[str] = set()
            for key, _ in item:
                if key in seen:
                    return place, key
                seen.add(key)
            stack.extend(((*place, k), v) for k, v in reversed(item))
        elif isinstance(item, list):
            stack.extend(((*place, i), v) for i, v in reversed(list(enumerate(item))))
    return None
