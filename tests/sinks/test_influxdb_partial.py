"""Which messages an InfluxDB partial write refused, from the answers influxd 1.6.7 gave (recorded
with tests/support/influxd.py) and the 2.x texts of spec §4.2."""

from __future__ import annotations

from typing import Any

from fieldbridge.model import JournalEntry, Reading
from fieldbridge.sinks.influxdb_lines import Layout, Line, Renderer
from fieldbridge.sinks.influxdb_partial import rejected_lines

LAYOUT = Layout("{quantity}", "value", (), (), "s")


def line(entry_id: int, quantity: str, value: Any, at: float) -> Line:
    """The sink's own line of one reading (a text value as a reading's details)."""
    reading = (
        Reading(quantity, None, at, extra={"value": value})
        if isinstance(value, str)
        else Reading(quantity, value, at)
    )
    entry = JournalEntry(entry_id, at, "http", "dev", None, {}, b"", (reading,))
    [only] = Renderer(LAYOUT).entry_lines(entry)
    return only


def unparsable(entry_id: int, text: str) -> Line:
    return Line(entry_id, "bad", text, {}, text)


LINES = [
    line(1, "b", 2.0, 3),
    line(2, "b", "x", 2),
    line(3, "c", 1.0, 5),
    line(4, "c", "y", 6),
    line(5, "d e", 1.0, 7),
]


def test_a_named_conflict_refuses_the_lines_of_that_field_and_type() -> None:
    answer = (
        'partial write: field type conflict: input field "value" on measurement "b" is type '
        "string, already exists as type float dropped=1"
    )
    assert rejected_lines(answer, LINES) == {2: answer.removeprefix("partial write: ")[:-10]}


def test_a_conflict_on_an_escaped_measurement() -> None:
    answer = (
        'partial write: field type conflict: input field "value" on measurement "d e" is type '
        "float, already exists as type string dropped=1"
    )
    assert list(rejected_lines(answer, LINES) or {}) == [5]


def test_the_v2_text_of_a_conflict() -> None:
    answer = (
        "failure writing points to database: partial write: field type conflict: input field "
        '"value" on measurement "c" is type float, already exists as type string dropped=1'
    )
    assert list(rejected_lines(answer, LINES) or {}) == [3]


def test_more_dropped_than_named_is_not_matched() -> None:
    # influxd names the first conflict only: two measurements conflicted, one is named.
    answer = (
        'partial write: field type conflict: input field "value" on measurement "c" is type '
        "float, already exists as type string dropped=2"
    )
    assert rejected_lines(answer, LINES) is None


def test_unparsable_lines_are_not_counted_in_dropped_by_1x() -> None:
    lines = [*LINES, unparsable(6, "bad line"), unparsable(7, "other bad")]
    one = "partial write: unable to parse 'bad line': invalid field format dropped=0"
    assert rejected_lines(one, lines) == {6: "unable to parse line: invalid field format"}
    two = (
        "partial write: unable to parse 'bad line': invalid field format\n"
        "unable to parse 'other bad': invalid field format dropped=0"
    )
    assert sorted(rejected_lines(two, lines) or {}) == [6, 7]


def test_a_quoted_line_that_is_not_ours_is_not_matched() -> None:
    answer = "partial write: unable to parse 'x y z': invalid field format dropped=0"
    assert rejected_lines(answer, LINES) is None


def test_a_reason_that_names_no_line_is_not_matched() -> None:
    assert rejected_lines("partial write: points beyond retention policy dropped=2", LINES) is None
    assert (
        rejected_lines("partial write: max-values-per-tag limit exceeded dropped=1", LINES) is None
    )
