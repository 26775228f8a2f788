"""strict_json: orjson's speed, with duplicate keys refused and non-UTF-8 bodies located."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fieldbridge.codecs.strict_json import loads
from fieldbridge.errors import DecodeError


def refusal(payload: bytes) -> DecodeError:
    with pytest.raises(DecodeError) as caught:
        loads(payload, "body")
    return caught.value


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"device": "a", "device": "b"}', "body: key 'device' appears twice"),
        (b'{"r": {"t": 1, "u": 2, "t": 3}}', "r: key 't' appears twice"),
        (b'[{"a": 1}, {"b": {"c": [0, {"d": 1, "d": 1}]}}]', "[1].b.c[1]: key 'd' appears twice"),
        (b'{"a.b": {"x": 1, "x": 2}}', "[\"a.b\"]: key 'x' appears twice"),
        # The same key spelled once plainly and once with an escape is still the same key.
        (b'{"device": 1, "d\\u0065vice": 2}', "body: key 'device' appears twice"),
        # A duplicate's colons hidden by an escaped colon elsewhere are still found.
        (b'{"a": 1, "a": "\\u003a"}', "body: key 'a' appears twice"),
        (b'{"\\u001b[31m": 1, "\\u001b[31m": 2}', "body: key '\\x1b[31m' appears twice"),
    ],
)
def test_duplicate_keys_are_refused_with_the_key_and_its_place(payload: bytes, reason: str) -> None:
    error = refusal(payload)
    assert error.reason.startswith(reason), error.reason
    assert error.cause == "duplicate_key"
    assert not error.malformed  # valid JSON syntax, refused by our rule


@pytest.mark.parametrize(
    "payload",
    [
        b'{"ts": "2024-01-01T00:00:00Z", "a": {"b": "x:y:z"}, "c": [{"b": 1}, {"b": 2}]}',
        b'{"k": "\\u00e9:\\n", "k2": "\\u003a"}',  # escapes take the careful path, no refusal
        b'{"a": 1}',
        b"[]",
        b'"just: text"',
    ],
)
def test_unique_keys_parse_as_orjson_does(payload: bytes) -> None:
    assert loads(payload, "body") == orjson.loads(payload)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"device": "\xff"}', "body is not UTF-8: invalid byte 0xff at offset 12"),
        (b'{"a": "\xe2\x82"}', "body is not UTF-8: invalid byte 0xe2 at offset 7"),
        (b'{"a": "\xed\xa0\x80"}', "body is not UTF-8: invalid byte 0xed at offset 7"),  # CESU
        (b'{"a": 1}\xe2\x82', "body is not UTF-8: it ends inside a character (offset 8)"),
    ],
)
def test_invalid_utf8_names_the_byte_and_offset(payload: bytes, reason: str) -> None:
    error = refusal(payload)
    assert error.reason == reason
    assert error.malformed and error.cause == "not_utf8"
    assert "surrogates" not in error.reason


def test_other_syntax_errors_keep_orjsons_words() -> None:
    error = refusal(b'{"a": ')
    assert error.reason.startswith("body is not valid JSON: ")
    assert error.malformed and error.cause is None


def test_deep_nesting_is_checked_or_refused_never_crashed() -> None:
    # orjson reads 1024 levels but writes 254; json's recursion limit is near 1000. Deeper
    # than 254 the careful parse checks; past its limit the payload is refused with a reason.
    def nested(levels: int, inner: bytes = b"1") -> bytes:
        return b'{"k": "A", "d":' + b"[" * levels + inner + b"]" * levels + b"}"

    assert loads(nested(600), "body")["k"] == "A"
    assert "key 'x' appears twice" in refusal(nested(600, b'{"x": 1, "x": 2}')).reason
    assert "nests too deeply to check for duplicate keys" in refusal(nested(1020)).reason
    assert loads(b'{"d":' + b"[" * 1020 + b"1" + b"]" * 1020 + b"}", "body")  # one key: no check


# --- fuzzing: the fast check is exact -------------------------------------------------------

# Keys and text rich in what could fool a byte-level check: colons, quotes, escapes.
texts = st.text(st.sampled_from(["a", "b", ":", '"', "\\", "é", "\x1b", " "]), max_size=4)


class Obj(list[tuple[str, Any]]):
    """An object as written: its pairs in order, duplicates allowed."""


def objects(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Obj]:
    return st.lists(st.tuples(texts, inner), max_size=4).map(Obj)


trees = st.recursive(
    st.none() | st.integers(-5, 5) | texts,
    lambda inner: st.lists(inner, max_size=3) | objects(inner),
    max_leaves=12,
)


def write(value: Any, ascii_only: bool) -> str:
    if isinstance(value, Obj):
        pairs = (f"{write(k, ascii_only)}: {write(v, ascii_only)}" for k, v in value)
        return "{" + ", ".join(pairs) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(write(v, ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


def has_duplicate(value: Any) -> bool:
    if isinstance(value, Obj):
        keys = [k for k, _ in value]
        return len(set(keys)) != len(keys) or any(has_duplicate(v) for _, v in value)
    if isinstance(value, list):
        return any(has_duplicate(v) for v in value)
    return False


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees, st.booleans())
def test_fuzz_refused_exactly_when_an_object_repeats_a_key(tree: Any, ascii_only: bool) -> None:
    payload = write(tree, ascii_only).encode()
    if has_duplicate(tree):
        error = refusal(payload)
        assert error.cause == "duplicate_key"
        assert error.reason.isprintable()
    else:
        assert loads(payload, "body") == orjson.loads(payload)
