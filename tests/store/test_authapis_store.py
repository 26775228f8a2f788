"""Kept OAuth tokens, skip counts and DUNE DB action records, on both backends."""

from __future__ import annotations

from fieldbridge.model import DuneActionState, StoredToken
from fieldbridge.store import Store


async def test_tokens_are_kept_replaced_and_their_failures_noted(store: Store) -> None:
    assert await store.load_token("sink:a") is None
    await store.note_token_failure("sink:a", 1, "token endpoint unreachable")
    assert await store.load_token("sink:a") is None, "a failure alone keeps no token"
    health = await store.token_health("sink:a")
    assert health is not None and (health.failures, health.last_error) == (
        1,
        "token endpoint unreachable",
    )
    first = StoredToken("fp", "a" * 1500, "r1", "Bearer", 1000.0, 700.0)
    await store.save_token("sink:a", first)
    assert await store.load_token("sink:a") == first
    health = await store.token_health("sink:a")
    assert health is not None and (health.failures, health.last_error, health.failed_at) == (
        0,
        None,
        None,
    )
    rotated = StoredToken("fp", "b" * 10, "r2", "Bearer", None, 800.0)
    await store.save_token("sink:a", rotated)
    assert await store.load_token("sink:a") == rotated
    await store.note_token_failure("sink:a", 3, "HTTP 401")
    assert await store.load_token("sink:a") == rotated, "a failure keeps the token"
    assert (await store.token_health("sink:a")).failures == 3  # type: ignore[union-attr]


async def test_skips_add_up_by_reason(store: Store) -> None:
    await store.add_skips("trapnz", {"flag_off": 2, "bad_event": 1}, 10)
    await store.add_skips("trapnz", {"flag_off": 3, "unknown_device": 0}, 12)
    await store.add_skips("other", {"flag_off": 1}, 12)
    assert await store.sink_skips("trapnz") == {"bad_event": 1, "flag_off": 5}
    assert await store.sink_skips("nobody") == {}


async def test_dune_actions_intended_created_released(store: Store) -> None:
    readings = [{"quantity": "tension", "value": 5.2, "measured_at": "2026-12-01T00:00:00Z"}]
    first = await store.intend_dune_action(
        "dune", 7, component_uuid="c-1", form_id="wire_tension", readings=readings
    )
    assert (first.state, first.attempts, first.action_id) == (DuneActionState.INTENDED, 1, None)
    assert first.readings == tuple(readings)
    again = await store.intend_dune_action(
        "dune", 7, component_uuid="c-1", form_id="wire_tension", readings=readings
    )
    assert again.attempts == 2
    await store.release_dune_intent("dune", 7)  # that POST was refused: uncounted
    assert (await store.dune_actions("dune", [7]))[7].attempts == 1
    await store.confirm_dune_action("dune", 7, "0123456789abcdef01234567")
    done = (await store.dune_actions("dune", [7, 8]))[7]
    assert (done.state, done.action_id) == (DuneActionState.CREATED, "0123456789abcdef01234567")
    assert done.created_at is not None
    after = await store.intend_dune_action(
        "dune", 7, component_uuid="c-1", form_id="wire_tension", readings=readings
    )
    assert after.state is DuneActionState.CREATED and after.attempts == 1, "created stays put"
    await store.release_dune_intent("dune", 7)
    assert (await store.dune_actions("dune", [7]))[7].state is DuneActionState.CREATED

    await store.intend_dune_action("dune", 8, component_uuid="c", form_id="f", readings=[])
    await store.release_dune_intent("dune", 8)
    assert await store.dune_actions("dune", [8]) == {}, "no POST may have reached the DB"


async def test_forgetting_a_sink_drops_its_token_skips_and_actions(store: Store) -> None:
    await store.save_progress("gone", cursor=3, state="idle", last_error=None)  # type: ignore[arg-type]
    await store.save_token("sink:gone", StoredToken("fp", "a", None, "Bearer", None, 1.0))
    await store.add_skips("gone", {"flag_off": 1}, 3)
    await store.intend_dune_action("gone", 1, component_uuid="c", form_id="f", readings=[])
    await store.save_token("sink:kept", StoredToken("fp", "b", None, "Bearer", None, 1.0))
    assert await store.forget_sink("gone") == (True, 0)
    assert await store.load_token("sink:gone") is None
    assert await store.sink_skips("gone") == {}
    assert await store.list_dune_actions("gone") == []
    assert await store.load_token("sink:kept") is not None
