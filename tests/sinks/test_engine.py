"""The sink engine with the real webhook sink against a real local receiver, on both stores;
partial deliveries with the real InfluxDB sink against the InfluxDB 2.x fake."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from fieldbridge.codecs.http_json import decode
from fieldbridge.ingest import Ingest
from fieldbridge.model import Accepted, Decoded, Reading
from fieldbridge.observe import Metrics
from fieldbridge.plugin import RouteSettings
from fieldbridge.sinks.engine import SinkRunner
from fieldbridge.sinks.influxdb import InfluxDBDestination
from fieldbridge.sinks.influxdb_settings import InfluxDBSettings
from fieldbridge.sinks.webhook import WebhookDestination, WebhookSettings
from fieldbridge.store import Pending, Store, open_store, parse_store_url
from fieldbridge.store.migrate import upgrade
from tests.conftest import eventually
from tests.fakes.influxdb_v2 import FakeInfluxDBv2
from tests.fakes.webhook import (
    ACCEPTED,
    DUPLICATE,
    FAILED,
    HUNG,
    POISONED,
    THROTTLED,
    WebhookReceiver,
    refused_url,
)
from tests.support.sinks import run_sink

T0 = 1_700_000_000.0
SINK = "hook"


@pytest.fixture
async def hook() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver() as receiver:
        yield receiver
    assert receiver.violations == [], "fieldbridge broke the webhook contract"


def settings(url: str, name: str = SINK, **overrides: Any) -> WebhookSettings:
    values: dict[str, Any] = {"max_backoff": 0.4, "timeout": 0.5, "batch_size": 10}
    values.update(overrides)
    return WebhookSettings(name=name, url=url, **values)


def message(
    i: int, *, source: str = "http", device: str | None = None, kind: str | None = None
) -> Pending:
    decoded = Decoded(
        device or f"dev-{i % 3}",
        (Reading("temperature", float(i), T0 + i, 0, "Cel"), Reading("battery", 3.3, T0 + i, 1)),
        kind=kind,
    )
    return Pending(source, T0 + i, '{"via": "test"}', f"payload {i}".encode(), decoded=[decoded])


async def put(store: Store, pendings: list[Pending]) -> list[int]:
    """Commit messages; return their journal ids."""
    ids: list[int] = []
    for outcome in await store.commit(pendings):
        assert isinstance(outcome, Accepted)
        ids.extend(outcome.ids)
    return ids


async def put_n(store: Store, n: int, start: int = 0) -> list[int]:
    return await put(store, [message(start + i) for i in range(n)])


def quick_runner(
    store: Store, sink: WebhookSettings, metrics: Metrics | None = None, lag_every: float = 5.0
) -> SinkRunner:
    # A shorter first back-off and idle poll than the defaults keep each test to a second or two.
    return SinkRunner(
        "webhook",
        sink,
        WebhookDestination(sink),
        store,
        metrics,
        backoff_base=0.05,
        idle_poll=0.1,
        lag_every=lag_every,
    )


@contextlib.asynccontextmanager
async def running(
    store: Store, sink: WebhookSettings, metrics: Metrics | None = None, lag_every: float = 5.0
) -> AsyncIterator[SinkRunner]:
    """A real SinkRunner task for the duration of the block; stopping it must be clean."""
    async with run_sink(quick_runner(store, sink, metrics, lag_every)) as runner:
        yield runner


async def cursor_is(store: Store, value: int, within: float = 10.0) -> None:
    async def check() -> bool:
        return (await store.sink_state(SINK)).cursor == value

    await eventually(check, f"the cursor at {value}", timeout=within)


async def state_is(store: Store, state: str, name: str = SINK) -> None:
    async def check() -> bool:
        return (await store.sink_state(name)).state == state

    await eventually(check, f"sink {name} {state}")


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


async def test_delivers_in_id_order_and_moves_cursor_only_after_acceptance(
    store: Store, hook: WebhookReceiver
) -> None:
    ids = await put_n(store, 25)
    assert ids == list(range(1, 26))
    hook.hold_replies()
    sink = settings(hook.url, timeout=5.0, headers={"Authorization": "Bearer s3cret"})
    async with running(store, sink) as runner:
        await hook.wait_for(lambda: hook.held == 1)
        # The receiver has the first batch but has not answered: the cursor must not move.
        assert hook.received_ids == list(range(1, 11))
        await asyncio.sleep(0.2)  # a window in which nothing may happen
        assert (await store.sink_state(SINK)).cursor == 0
        hook.release_replies()
        await cursor_is(store, 25)
        assert hook.received_ids == ids
        more = await put_n(store, 5, start=25)
        runner.wake()
        await cursor_is(store, 30)
        await state_is(store, "idle")

    assert hook.received_ids == ids + more == list(range(1, 31))
    assert hook.ingested_ids == hook.received_ids  # nothing was sent twice
    keys = [r.idempotency_key for r in hook.requests]
    assert keys == ["hook:1-10", "hook:11-20", "hook:21-25", "hook:26-30"]
    assert {r.outcome for r in hook.requests} == {ACCEPTED}
    first = hook.requests[0]
    assert first.headers["authorization"] == "Bearer s3cret"
    assert first.headers["user-agent"].startswith("fieldbridge/")
    # What arrived is what the store holds.
    stored = {e.id: e for e in await store.read_journal(0, 100)}
    for sent in hook.received:
        entry = stored[sent["id"]]
        assert (sent["device"], sent["source"]) == (entry.device, entry.source)
        assert [r["value"] for r in sent["readings"]] == [r.value for r in entry.readings]
    state = await store.sink_state(SINK)
    assert state.last_error is None


async def test_5xx_keeps_the_cursor_backs_off_and_recovers_in_order(
    store: Store, hook: WebhookReceiver
) -> None:
    hook.fail(500)
    await put_n(store, 12)
    async with running(store, settings(hook.url, batch_size=5)) as runner:
        await hook.wait_for(lambda: hook.counts[FAILED] >= 1)
        await asyncio.sleep(1.5)  # a window in which nothing may happen
        state = await store.sink_state(SINK)
        assert state.cursor == 0
        assert state.state == "backoff"
        assert state.last_error is not None and "HTTP 500" in state.last_error
        assert runner.state == "backoff"
        failed = hook.requests_with(FAILED)
        # Back-off, not a tight loop: a handful of attempts in 1.5 s, none further apart than
        # the cap (0.4 s) plus slack for a loaded machine, all for the same first batch (the
        # sink keeps its place).
        assert 3 <= len(failed) <= 40
        assert max(gaps([r.at for r in failed])) < 0.4 + 0.5
        assert {r.ids for r in failed} == {(1, 2, 3, 4, 5)}
        hook.recover()
        await cursor_is(store, 12)
        await state_is(store, "idle")

    assert hook.received_ids == list(range(1, 13))
    assert (await store.sink_state(SINK)).last_error is None
    assert await store.count_dead_letters(SINK) == 0


async def test_a_long_outage_never_kills_the_sink(tmp_path: Path, hook: WebhookReceiver) -> None:
    # Over a thousand failed attempts in a row (two days at the default 5-minute cap) must not
    # overflow the exponential back-off. Engine arithmetic only, so one backend is enough.
    url = f"sqlite:///{tmp_path / 'outage.db'}"
    upgrade(parse_store_url(url))
    hook.fail(503)
    async with open_store(url) as store:
        await put_n(store, 3)
        sink = settings(hook.url, max_backoff=0.001)
        runner = quick_runner(store, sink)
        task = asyncio.create_task(runner.run())
        try:
            await hook.wait_for(lambda: hook.counts[FAILED] >= 1100 or task.done(), within=30)
            if task.done():
                task.result()  # re-raises whatever killed the runner
            assert runner.state == "backoff"
            assert (await store.sink_state(SINK)).cursor == 0
            hook.recover()
            await cursor_is(store, 3)
        finally:
            runner.stop()
            await asyncio.wait_for(task, 10)
    assert hook.received_ids == [1, 2, 3]


async def test_include_payload_sends_the_raw_bytes(store: Store, hook: WebhookReceiver) -> None:
    async with Ingest(store, flush_ms=1) as ingest:
        raw = [
            orjson.dumps({"device": "d1", "readings": {"t": i}, "id": f"k{i}"}) for i in range(3)
        ]
        for payload in raw:
            assert isinstance(await ingest.submit("http", payload, decode), Accepted)
    async with running(store, settings(hook.url, include_payload=True)):
        await cursor_is(store, 3)
    assert [base64.b64decode(m["payload_b64"]) for m in hook.received] == raw


async def test_429_waits_for_retry_after(store: Store, hook: WebhookReceiver) -> None:
    hook.throttle(retry_after=1, times=1)
    await put_n(store, 3)
    # max_backoff is 0.4 s: a wait of a full second can only come from Retry-After.
    async with running(store, settings(hook.url)):
        await hook.wait_for(lambda: hook.counts[THROTTLED] == 1)
        await state_is(store, "backoff")
        assert "HTTP 429" in ((await store.sink_state(SINK)).last_error or "")
        await cursor_is(store, 3)

    throttled, accepted = hook.requests
    assert (throttled.outcome, accepted.outcome) == (THROTTLED, ACCEPTED)
    assert accepted.at - throttled.at >= 0.95
    assert hook.received_ids == [1, 2, 3]


async def test_poison_message_is_isolated_by_bisection_and_dead_lettered(
    store: Store, hook: WebhookReceiver
) -> None:
    n = 16
    await put_n(store, n)
    hook.poison(6)
    async with running(store, settings(hook.url, batch_size=n)) as runner:
        await cursor_is(store, n)
        assert hook.received_ids == [i for i in range(1, n + 1) if i != 6]
        letters = await store.list_dead_letters(sink=SINK)
        assert [(d.message_id, d.status, d.state, d.attempts) for d in letters] == [
            (6, 400, "dead", 1)
        ]
        assert "message 6 is unacceptable" in letters[0].body
        # Halving a batch of 16 down to the one message: 16, 8, 4, 2, 1 refused, and one
        # accepted request for each other half: far fewer than one request per message.
        depth = int(math.log2(n))
        assert hook.counts[POISONED] == depth + 1
        assert len(hook.requests) == 2 * depth + 1
        assert all(6 in r.ids for r in hook.requests_with(POISONED))
        # The sink goes on with later messages.
        await put_n(store, 4, start=n)
        runner.wake()
        await cursor_is(store, n + 4)

    assert hook.received_ids[-4:] == [17, 18, 19, 20]
    assert await store.count_dead_letters(SINK) == 1
    assert (await store.sink_state(SINK)).last_error is None


async def test_several_poison_messages_in_one_batch(store: Store, hook: WebhookReceiver) -> None:
    await put_n(store, 10)
    hook.poison(1, 7, 10)
    async with running(store, settings(hook.url, batch_size=10)):
        await cursor_is(store, 10)
    assert hook.received_ids == [2, 3, 4, 5, 6, 8, 9]
    letters = await store.list_dead_letters(sink=SINK)
    assert sorted(d.message_id for d in letters) == [1, 7, 10]
    assert len(hook.requests) < 2 * 10


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "fieldbridge.sinks" and r.levelno >= logging.WARNING
    ]


@pytest.mark.parametrize("status", [404, 410, 401])
async def test_a_destination_refusing_everything_is_failing_and_keeps_every_message(
    store: Store, hook: WebhookReceiver, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    # A wrong URL (or key) answers every message the same way: that is the destination failing,
    # not 100 bad messages. The receiver comes back on the third offer of the whole batch.
    n = 100
    await put_n(store, n)
    whole = tuple(range(1, n + 1))
    offers = itertools.count(1)
    hook.fail(status, recover_on=lambda ids: ids == whole and next(offers) == 3)
    with caplog.at_level(logging.INFO, logger="fieldbridge.sinks"):
        async with running(store, settings(hook.url, batch_size=n)) as runner:
            await state_is(store, "failing")
            state = await store.sink_state(SINK)
            assert state.cursor == 0
            assert state.last_error is not None and f"HTTP {status}" in state.last_error
            assert await store.count_dead_letters(SINK) == 0
            await cursor_is(store, n)
            await state_is(store, "idle")
            assert runner.last_error is None

    assert hook.received_ids == list(whole)  # everything, once, in order
    assert await store.count_dead_letters(SINK) == 0
    failed = hook.requests_with(FAILED)
    assert sum(r.ids == whole for r in hook.requests) == 3
    # Two failing attempts: each offers the whole batch, halves down to the first message and
    # then probes a few single messages (4, then 8), never two requests per message (199).
    assert len(failed) <= 2 * (1 + math.ceil(math.log2(n)) + 8), len(failed)
    # One warning for the change to failing, one line when it delivers again.
    (warning,) = warnings(caplog)
    assert f"HTTP {status}" in warning and "messages are kept" in warning
    again = [r for r in caplog.records if "accepts messages again" in r.getMessage()]
    assert len(again) == 1


async def test_a_destination_back_in_the_middle_of_a_probe_loses_nothing(
    store: Store, hook: WebhookReceiver
) -> None:
    # It comes back between two probes: what it refused while down is offered again, not
    # dead-lettered (it may arrive after the probe that found the destination up).
    n = 30
    await put_n(store, n)
    probes = itertools.count(1)
    hook.fail(404, recover_on=lambda ids: len(ids) == 1 and next(probes) == 3)
    async with running(store, settings(hook.url, batch_size=n)):
        await cursor_is(store, n)
        await state_is(store, "idle")
    assert sorted(hook.ingested_ids) == list(range(1, n + 1))
    assert await store.count_dead_letters(SINK) == 0


async def test_a_batch_the_destination_partly_refuses_dead_letters_only_the_refused(
    store: Store, hook: WebhookReceiver
) -> None:
    await put_n(store, 10)
    hook.poison(3, 7, status=404)  # a receiver that knows no device of these two messages
    async with running(store, settings(hook.url, batch_size=10)):
        await cursor_is(store, 10)
        await state_is(store, "idle")
    assert hook.received_ids == [1, 2, 4, 5, 6, 8, 9, 10]
    letters = await store.list_dead_letters(sink=SINK)
    assert [(d.message_id, d.status) for d in letters] == [(3, 404), (7, 404)]
    state = await store.sink_state(SINK)
    assert state.last_error is None


async def test_a_refusal_counts_as_the_messages_once_a_later_message_is_accepted(
    store: Store, hook: WebhookReceiver
) -> None:
    await put_n(store, 5)
    hook.poison(5, status=404)
    async with running(store, settings(hook.url, batch_size=10)) as runner:
        # Nothing after message 5 was accepted yet: the destination may be the one at fault.
        await state_is(store, "failing")
        await cursor_is(store, 4)
        assert await store.count_dead_letters(SINK) == 0
        await put_n(store, 2, start=5)
        runner.wake()
        await cursor_is(store, 7)
        await state_is(store, "idle")
    assert hook.received_ids == [1, 2, 3, 4, 6, 7]
    assert [d.message_id for d in await store.list_dead_letters(sink=SINK)] == [5]


async def test_timeouts_are_retried_and_lose_nothing(store: Store, hook: WebhookReceiver) -> None:
    hook.hang(2, seconds=3.0)
    await put_n(store, 6)
    async with running(store, settings(hook.url, batch_size=3, timeout=0.5)):
        await hook.wait_for(lambda: hook.counts[HUNG] == 1)
        await state_is(store, "backoff")
        error = (await store.sink_state(SINK)).last_error or ""
        assert "unreachable" in error and "Timeout" in error
        assert (await store.sink_state(SINK)).cursor == 0
        await cursor_is(store, 6)

    assert [r.ids for r in hook.requests_with(HUNG)] == [(1, 2, 3), (1, 2, 3)]
    assert hook.received_ids == [1, 2, 3, 4, 5, 6]


async def test_a_late_answer_causes_a_repeat_the_idempotency_key_exposes(
    store: Store, hook: WebhookReceiver
) -> None:
    # The receiver takes the batch but answers after the client gave up: at-least-once means
    # the batch comes again, with the same Idempotency-Key so the receiver can drop it.
    hook.hang(1, seconds=0.8, then_accept=True)
    await put_n(store, 3)
    async with running(store, settings(hook.url, batch_size=3, timeout=0.5)):
        await cursor_is(store, 3)
        await hook.wait_for(lambda: len(hook.received) == 6)
    assert sorted(hook.received_ids) == [1, 1, 2, 2, 3, 3]
    assert hook.ingested_ids == [1, 2, 3]
    assert {r.idempotency_key for r in hook.requests} == {"hook:1-3"}
    assert hook.counts[HUNG] == 1 and hook.counts[ACCEPTED] + hook.counts[DUPLICATE] == 1


@contextlib.contextmanager
def hanging(hook: WebhookReceiver) -> Iterator[str]:
    hook.hang(1000, seconds=30.0)
    yield hook.url


@pytest.mark.parametrize("trouble", ["refused", "hanging"])
async def test_a_sink_that_is_down_blocks_neither_ingest_nor_other_sinks(
    store: Store, trouble: str
) -> None:
    async with WebhookReceiver() as healthy, WebhookReceiver() as broken:
        with refused_url() if trouble == "refused" else hanging(broken) as bad_url:
            down = settings(bad_url, name="down", batch_size=50)
            up = settings(healthy.url, name="up", batch_size=50)
            async with (
                Ingest(store, batch_size=50, flush_ms=2) as ingest,
                running(store, down) as down_runner,
                running(store, up) as up_runner,
            ):
                ingest.on_commit(down_runner.wake)
                ingest.on_commit(up_runner.wake)
                await state_is(store, "idle", name="up")
                outcomes = await asyncio.wait_for(
                    asyncio.gather(
                        *(
                            ingest.submit(
                                "http",
                                orjson.dumps({"device": f"d{i % 7}", "readings": {"t": i}}),
                                decode,
                            )
                            for i in range(200)
                        )
                    ),
                    10,
                )
                assert all(isinstance(o, Accepted) for o in outcomes)
                await healthy.wait_for(lambda: len(healthy.received) == 200)
                await state_is(store, "backoff", name="down")
                stuck = await store.sink_state("down")
        assert broken.violations == [] and healthy.violations == []

    assert healthy.received_ids == list(range(1, 201))
    assert [m["readings"][0]["value"] for m in healthy.received] == [float(i) for i in range(200)]
    assert stuck.cursor == 0 and "unreachable" in (stuck.last_error or "")
    assert (await store.sink_state("up")).cursor == 200
    assert broken.received == []


async def route_test(
    store: Store, hook: WebhookReceiver, route: RouteSettings, pendings: list[Pending]
) -> list[dict[str, Any]]:
    """Deliver `pendings` through a sink with `route`; return what the receiver got."""
    ids = await put(store, pendings)
    async with running(store, settings(hook.url, batch_size=4, route=route)):
        # The cursor passes over filtered-out messages, the last of which are filtered out.
        await cursor_is(store, ids[-1])
    return hook.received


async def test_route_by_source(store: Store, hook: WebhookReceiver) -> None:
    sources = ["http", "mqtt", "http", "coap", "mqtt", "http", "http", "coap", "http", "http"]
    got = await route_test(
        store,
        hook,
        RouteSettings(sources=["mqtt", "coap"]),
        [message(i, source=s) for i, s in enumerate(sources)],
    )
    assert [m["id"] for m in got] == [2, 4, 5, 8]
    assert {m["source"] for m in got} == {"mqtt", "coap"}
    # The last batch (ids 9-10) held nothing for this sink: no request for it.
    assert [r.idempotency_key for r in hook.requests] == ["hook:2-4", "hook:5-8"]


async def test_route_by_kind(store: Store, hook: WebhookReceiver) -> None:
    kinds = ["soil", None, "weather", "soil", "soil", None, "weather", "weather", None]
    got = await route_test(
        store,
        hook,
        RouteSettings(kinds=["soil"]),
        [message(i, kind=k) for i, k in enumerate(kinds)],
    )
    assert [m["id"] for m in got] == [1, 4, 5]
    assert {m["kind"] for m in got} == {"soil"}


async def test_route_by_device_flag(store: Store, hook: WebhookReceiver) -> None:
    devices = ["a", "b", "c", "a", "b", "c", "a", "c", "c"]
    ids = await put(store, [message(i, device=d) for i, d in enumerate(devices)])
    await store.update_device("a", flags={"upload_x": True})
    await store.update_device("b", flags={"upload_x": False, "other": True})
    route = RouteSettings(flag="upload_x")
    async with running(store, settings(hook.url, batch_size=4, route=route)) as runner:
        await cursor_is(store, ids[-1])
        assert hook.received_ids == [1, 4, 7]
        # Turning the flag on takes effect for messages after the cursor.
        await store.update_device("c", flags={"upload_x": True})
        more = await put(store, [message(20, device="c"), message(21, device="b")])
        runner.wake()
        await cursor_is(store, more[-1])
    assert hook.received_ids == [1, 4, 7, more[0]]
    assert {m["device"] for m in hook.received} == {"a", "c"}


async def test_pause_holds_delivery_and_resume_continues(
    store: Store, hook: WebhookReceiver
) -> None:
    await store.set_paused(SINK, True)
    await put_n(store, 5)
    async with running(store, settings(hook.url)) as runner:
        await state_is(store, "paused")
        await asyncio.sleep(0.3)  # a window in which nothing may happen
        assert hook.requests == []
        assert (await store.sink_state(SINK)).cursor == 0
        await store.set_paused(SINK, False)
        runner.wake()
        await cursor_is(store, 5)
    assert hook.received_ids == [1, 2, 3, 4, 5]
    assert (await store.sink_state(SINK)).paused is False


async def test_pause_takes_effect_while_the_destination_fails(
    store: Store, hook: WebhookReceiver
) -> None:
    hook.fail(503)
    await put_n(store, 5)
    async with running(store, settings(hook.url)) as runner:
        await hook.wait_for(lambda: hook.counts[FAILED] >= 2)
        await store.set_paused(SINK, True)
        await state_is(store, "paused")
        hook.recover()
        sent = len(hook.requests)
        await asyncio.sleep(0.5)  # a window in which nothing may happen
        assert len(hook.requests) == sent, "a paused sink must not send"
        assert (await store.sink_state(SINK)).cursor == 0
        await store.set_paused(SINK, False)
        runner.wake()
        await cursor_is(store, 5)
    assert hook.received_ids == [1, 2, 3, 4, 5]


async def test_replay_sends_again_from_the_requested_cursor(
    store: Store, hook: WebhookReceiver
) -> None:
    await put_n(store, 10)
    async with running(store, settings(hook.url)) as runner:
        await cursor_is(store, 10)
        await store.request_replay(SINK, 4)
        runner.wake()
        await hook.wait_for(lambda: len(hook.received) == 16)
        await cursor_is(store, 10)
        await eventually(lambda: _no_replay_pending(store), "the replay to be taken")
    assert hook.received_ids == list(range(1, 11)) + list(range(5, 11))
    assert hook.requests[-1].idempotency_key == "hook:5-10"


async def test_a_replay_that_delivers_a_dead_letter_clears_it(
    store: Store, hook: WebhookReceiver
) -> None:
    await put_n(store, 5)
    hook.poison(3)
    async with running(store, settings(hook.url)) as runner:
        await cursor_is(store, 5)
        assert [d.message_id for d in await store.list_dead_letters(sink=SINK)] == [3]
        hook.cure(3)
        await store.request_replay(SINK, 2)
        runner.wake()
        await hook.wait_for(lambda: 3 in hook.received_ids)
        await eventually(lambda: _no_dead_letters(store), "no dead letters")
        await cursor_is(store, 5)
    assert hook.received_ids == [1, 2, 4, 5, 3, 4, 5]


async def _no_dead_letters(store: Store) -> bool:
    return await store.count_dead_letters(SINK) == 0


async def _no_replay_pending(store: Store) -> bool:
    return (await store.sink_state(SINK)).replay_from is None


async def test_replay_takes_effect_while_the_destination_fails(
    store: Store, hook: WebhookReceiver
) -> None:
    await put_n(store, 6)
    async with running(store, settings(hook.url, batch_size=3)) as runner:
        await cursor_is(store, 6)
        hook.fail(500)
        await put_n(store, 3, start=6)
        runner.wake()
        await hook.wait_for(lambda: hook.counts[FAILED] >= 2)
        await store.request_replay(SINK, 0)
        await hook.wait_for(lambda: hook.requests[-1].ids[:1] == (1,))
        hook.recover()
        await cursor_is(store, 9)
        await hook.wait_for(lambda: len(hook.received) >= 6 + 9)
    assert hook.received_ids == list(range(1, 7)) + list(range(1, 10))


async def test_dead_letter_retry_resends_and_clears_it(store: Store, hook: WebhookReceiver) -> None:
    await put_n(store, 5)
    hook.poison(3)
    async with running(store, settings(hook.url)) as runner:
        await cursor_is(store, 5)
        assert hook.received_ids == [1, 2, 4, 5]
        # Retried while the receiver still refuses it: back to the dead letters, one more try.
        assert await store.mark_dead_letters(state="retry", sink=SINK) == 1
        runner.wake()

        async def tried_again() -> bool:
            letters = await store.list_dead_letters(sink=SINK)
            return [(d.attempts, d.state) for d in letters] == [(2, "dead")]

        await eventually(tried_again, "a second try")
        hook.cure(3)
        assert await store.mark_dead_letters(state="retry", sink=SINK) == 1
        runner.wake()

        async def cleared() -> bool:
            return await store.count_dead_letters(SINK) == 0

        await eventually(cleared, "the error to clear")
        await hook.wait_for(lambda: 3 in hook.received_ids)
        assert (await store.sink_state(SINK)).cursor == 5

    assert hook.received_ids == [1, 2, 4, 5, 3]
    assert hook.requests[-1].idempotency_key == "hook:3-3"
    assert hook.requests[-1].outcome == ACCEPTED
    assert hook.counts[POISONED] >= 2


async def test_interval_spaces_batches(store: Store, hook: WebhookReceiver) -> None:
    await put_n(store, 6)
    async with running(store, settings(hook.url, batch_size=2, interval=1.0)):
        await cursor_is(store, 6, within=10)
    times = [r.at for r in hook.requests]
    assert len(times) == 3
    assert min(gaps(times)) >= 0.95
    assert hook.received_ids == [1, 2, 3, 4, 5, 6]


async def test_metrics_count_sent_failed_and_dead(store: Store, hook: WebhookReceiver) -> None:
    metrics = Metrics()

    def sample(name: str) -> float | None:
        return metrics.registry.get_sample_value(name, {"sink": SINK})

    hook.fail(500)
    await put_n(store, 8)
    # lag_every=0: measure the lag on every pass
    async with running(store, settings(hook.url, batch_size=8), metrics, 0.0) as runner:
        await hook.wait_for(lambda: hook.counts[FAILED] >= 2)
        await eventually(_lag_reported(metrics, 8.0), "a lag of 8")
        assert (sample("fieldbridge_sink_lag_seconds") or 0.0) > 0
        hook.recover()
        hook.poison(4)
        await cursor_is(store, 8)
        await put_n(store, 2, start=8)
        runner.wake()
        await cursor_is(store, 10)
        await eventually(_lag_reported(metrics, 0.0), "a lag of 0")

    assert sample("fieldbridge_sink_sent_messages_total") == 9.0
    assert sample("fieldbridge_sink_dead_lettered_messages_total") == 1.0
    refused = hook.counts[FAILED] + hook.counts[POISONED]
    assert hook.counts[POISONED] == 4  # 8, 4, 2, 1
    assert sample("fieldbridge_sink_failed_attempts_total") == float(refused)
    assert sample("fieldbridge_sink_lag_seconds") == 0.0


def _lag_reported(metrics: Metrics, value: float) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        got = metrics.registry.get_sample_value("fieldbridge_sink_lag_messages", {"sink": SINK})
        return got == value

    return check


# --- Partial deliveries: the InfluxDB sink against the InfluxDB 2.x fake ----------------------
# A partial write keeps some lines and names the refused ones (PartialDeliveryError): only the
# messages owning them are dead-lettered, the rest count as sent, nothing is sent again.


def reading_message(i: int, *quantities: str) -> Pending:
    readings = tuple(Reading(q, float(i), T0 + i) for q in quantities)
    decoded = Decoded(f"dev-{i}", readings)
    return Pending("http", T0 + i, "{}", f"payload {i}".encode(), decoded=[decoded])


def influx_settings(fake: FakeInfluxDBv2, **overrides: Any) -> InfluxDBSettings:
    values: dict[str, Any] = {
        "name": SINK,
        "url": fake.url,
        "org": fake.org,
        "bucket": "sensors",
        "token": fake.token,
        "max_backoff": 0.4,
        "timeout": 5.0,
    }
    values.update(overrides)
    return InfluxDBSettings(**values)


@contextlib.asynccontextmanager
async def influx_running(
    store: Store, sink: InfluxDBSettings, metrics: Metrics | None = None
) -> AsyncIterator[SinkRunner]:
    runner = SinkRunner(
        "influxdb",
        sink,
        InfluxDBDestination(sink),
        store,
        metrics,
        backoff_base=0.05,
        idle_poll=0.1,
    )
    async with run_sink(runner):
        yield runner


@pytest.fixture
async def influx() -> AsyncIterator[FakeInfluxDBv2]:
    async with FakeInfluxDBv2() as fake:
        yield fake
    assert fake.violations == [], "fieldbridge broke the InfluxDB contract"


async def dead_ids(store: Store) -> list[int]:
    return sorted(d.message_id for d in await store.list_dead_letters(sink=SINK))


async def test_a_partial_delivery_dead_letters_only_the_refused_and_counts_the_rest_sent(
    store: Store, influx: FakeInfluxDBv2
) -> None:
    influx._types[("temperature", "value")] = "string"  # as if another writer put text there
    ids = await put(
        store,
        [
            reading_message(i, "temperature", "battery")
            if i % 3 == 0
            else reading_message(i, "battery")
            for i in range(9)
        ],
    )
    metrics = Metrics()
    async with influx_running(store, influx_settings(influx), metrics):
        await cursor_is(store, ids[-1])
    dead = await store.list_dead_letters(sink=SINK)
    assert [d.message_id for d in dead] == [ids[0], ids[3], ids[6]]
    assert all(d.status == 422 and "field type conflict" in d.body for d in dead)
    # The rest once more, to confirm what the partial write kept: a point overwrites itself.
    assert [status for _, status, _ in influx.requests] == [422, 204]

    def sample(name: str) -> float | None:
        return metrics.registry.get_sample_value(name, {"sink": SINK})

    assert sample("fieldbridge_sink_sent_messages_total") == 6.0
    assert sample("fieldbridge_sink_dead_lettered_messages_total") == 3.0
    assert sample("fieldbridge_sink_failed_attempts_total") == 1.0
    # The refused messages' other lines were kept by InfluxDB, as a partial write does.
    assert len(influx.series("battery")) == 9 and influx.series("temperature") == []


async def test_a_partial_write_that_undercounts_its_refusals_loses_nothing(
    store: Store, influx: FakeInfluxDBv2
) -> None:
    # One line conflicts on temperature (named), two on humidity (not named), and the answer
    # says dropped=1: matching the named line alone looks complete. The rest is sent again
    # to confirm, and the humidity lines are found refused then.
    influx._types[("temperature", "value")] = "string"
    influx._types[("humidity", "value")] = "string"
    influx.undercount = True
    ids = await put(
        store,
        [
            reading_message(0, "temperature"),
            reading_message(1, "battery"),
            reading_message(2, "humidity"),
            reading_message(3, "battery"),
            reading_message(4, "humidity"),
        ],
    )
    async with influx_running(store, influx_settings(influx)):
        await cursor_is(store, ids[-1])
    dead = await store.list_dead_letters(sink=SINK)
    assert sorted(d.message_id for d in dead) == [ids[0], ids[2], ids[4]]
    # 422 naming temperature; the rest again: 422 naming humidity with dropped=1 while two
    # lines match, so halves; each half: 422, then its good line again, 204.
    assert [status for _, status, _ in influx.requests] == [422, 422, 422, 204, 422, 204]
    assert len(influx.series("battery")) == 2


async def test_a_replay_and_a_retry_after_partial_deliveries(
    store: Store, influx: FakeInfluxDBv2
) -> None:
    influx._types[("temperature", "value")] = "string"
    influx._types[("humidity", "value")] = "string"
    ids = await put(
        store,
        [
            reading_message(1, "temperature"),
            reading_message(2, "humidity"),
            reading_message(3, "battery"),
            reading_message(4, "temperature", "humidity"),
        ],
    )
    async with influx_running(store, influx_settings(influx)) as runner:
        await cursor_is(store, ids[-1])
        assert await dead_ids(store) == [ids[0], ids[1], ids[3]]
        # The operator drops the text temperatures; a replay takes message 1 and clears its
        # dead letter, while 2 and 4 (humidity still text) stay dead, once each.
        del influx._types[("temperature", "value")]
        await store.request_replay(SINK, 0)
        runner.wake()
        await eventually(lambda: _no_replay_pending(store), "the replay to be taken")

        async def only_humidity_dead() -> bool:
            return await dead_ids(store) == [ids[1], ids[3]]

        await eventually(only_humidity_dead, "message 1's dead letter cleared")
        await cursor_is(store, ids[-1])
        letters = await store.list_dead_letters(sink=SINK)
        assert [d.attempts for d in letters] == [2, 2]
        # Then the humidities too; `deadletters retry` delivers both.
        del influx._types[("humidity", "value")]
        assert await store.mark_dead_letters(state="retry", sink=SINK) == 2
        runner.wake()
        await eventually(lambda: _no_dead_letters(store), "no dead letters")
    assert {p.tags["device"] for p in influx.series("temperature")} == {"dev-1", "dev-4"}
    assert {p.tags["device"] for p in influx.series("humidity")} == {"dev-2", "dev-4"}
    assert len(influx.series("battery")) == 1
