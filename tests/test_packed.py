"""Plain readings packed into the journal row (fieldbridge.packed): only plain numbers at one
instant pack, and a packed text gives back exactly the readings the reading rows give."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fieldbridge import packed
from fieldbridge.model import Reading
from fieldbridge.store import Store
from tests.store.test_store import T0, accepted, payload, record


def test_plain_readings_at_one_instant_pack_and_read_back() -> None:
    readings = [Reading("temp", 20.5, T0), Reading("hum", 61, T0), Reading("VBat", 0.1 + 0.2, T0)]
    text = packed.pack(readings)
    assert text == f"{T0!r}\x1etemp\x1fhum\x1fVBat\x1e20.5\x1f61.0\x1f0.30000000000000004"
    assert packed.unpack(text) == (
        T0,
        ["temp", "hum", "VBat"],
        ["20.5", "61.0", "0.30000000000000004"],
    )
    assert packed.readings(text) == (
        Reading("temp", 20.5, T0),
        Reading("hum", 61.0, T0),
        Reading("VBat", 0.1 + 0.2, T0),
    )


@pytest.mark.parametrize(
    "readings",
    [
        [],
        [Reading("temp", 1.0, T0), Reading("hum", 2.0, T0 + 0.001)],  # two instants
        [Reading("temp", None, T0)],
        [Reading("temp", 1.0, T0, channel=1)],
        [Reading("temp", 1.0, T0, unit="C")],
        [Reading("temp", 1.0, T0, extra={"tags": {"trap": "T1"}})],
        [Reading("temp", math.inf, T0)],
        [Reading("temp", math.nan, T0)],
        [Reading("temp", -0.0, T0)],  # SQLite keeps it as 0.0
        [Reading("a\x1fb", 1.0, T0)],
        [Reading("a\x1eb", 1.0, T0)],
    ],
)
def test_what_is_not_plain_does_not_pack(readings: list[Reading]) -> None:
    assert packed.pack(readings) is None


@given(
    st.lists(
        st.tuples(
            st.text(min_size=1, max_size=8),
            st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53),
        ),
        min_size=1,
        max_size=6,
    ),
    st.floats(min_value=0, max_value=4e9, allow_nan=False),
)
def test_any_plain_numbers_read_back_exactly(pairs: list[tuple[str, float]], at: float) -> None:
    readings = [Reading(quantity, value, at) for quantity, value in pairs]
    text = packed.pack(readings)
    separators = any("\x1e" in q or "\x1f" in q for q, _ in pairs)
    negative_zero = any(v == 0 and math.copysign(1.0, v) < 0 for _, v in pairs)
    if separators or negative_zero:
        assert text is None
        return
    assert text is not None
    back = packed.readings(text)
    assert [(r.quantity, r.measured_at) for r in back] == [(q, at) for q, _ in pairs]
    assert [r.value for r in back] == [float(v) for _, v in pairs]
    assert packed.unpack(text)[2] == [repr(float(v)) for _, v in pairs]


async def test_the_journal_keeps_the_packed_text_of_each_message(store: Store) -> None:
    """read_journal(readings=False) gives each message's packed text: the reading rows'
    values exactly, None for a message that is not all plain (its rows are read instead)."""
    batch = [
        payload(record("d1", readings=[Reading("temp", 1 / 3, T0), Reading("hum", 50.0, T0)])),
        payload(record("d2", readings=[Reading("temp", 1.0, T0, unit="C")])),
        payload(record("d3", readings=[])),
    ]
    await accepted(store, batch)
    bare = await store.read_journal(0, 10, readings=False)
    with_readings = await store.read_journal(0, 10)
    assert [e.readings for e in bare] == [(), (), ()]
    assert bare[0].packed is not None
    assert packed.readings(bare[0].packed) == tuple(
        Reading(r.quantity, r.value, r.measured_at) for r in with_readings[0].readings
    )
    assert [e.packed for e in bare[1:]] == [None, None]
    rows = await store.reading_rows([e.id for e in bare])
    assert sorted(rows) == [bare[0].id, bare[1].id]  # d3 has no readings
    assert rows[bare[1].id] == ((bare[1].id, "temp", 1.0, T0, 0, "C", None),)
