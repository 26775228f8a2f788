"""A first look at the store on both backends: commit, idempotency, read back."""

from __future__ import annotations

from fieldbridge.model import Accepted, Decoded, Reading, Rejected
from fieldbridge.store import Pending, Store


async def test_commit_then_read_back(store: Store) -> None:
    batch = [
        Pending(
            "http",
            100.0,
            "{}",
            b"a",
            decoded=[Decoded("dev-1", (Reading("temperature", 21.5, 99.0),), idempotency_key="k1")],
        ),
        Pending(
            "http",
            101.0,
            "{}",
            b"b",
            decoded=[
                Decoded("dev-1", (Reading("temperature", 22.0, 100.0),), idempotency_key="k1")
            ],
        ),
        Pending("http", 102.0, "{}", b"c", reason="bad"),
    ]
    outcomes = await store.commit(batch)
    assert outcomes[0] == Accepted((1,), 0)
    assert outcomes[1] == Accepted((1,), 1)
    assert isinstance(outcomes[2], Rejected)
    entries = await store.read_journal(0, 10)
    assert [e.id for e in entries] == [1]
    assert entries[0].readings[0].value == 21.5
    device = await store.get_device("dev-1")
    assert device is not None and device.message_count == 1
