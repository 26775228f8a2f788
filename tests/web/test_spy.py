"""fieldbridge spy: live payloads from the running service, filters, slow watchers, shutdown."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from fieldbridge.codecs.http_json import decode
from fieldbridge.ingest import Ingest
from fieldbridge.model import Accepted
from fieldbridge.observe import Metrics
from fieldbridge.store import open_store, parse_store_url
from fieldbridge.store.migrate import upgrade
from fieldbridge.web.spy import CHUNK_BYTES, DEFAULT_QUEUE_BYTES, SHOWN_READINGS, SpyHub, _stream
from tests.conftest import wait_until
from tests.support.processes import FieldbridgeProcess, run_cli, to_toml
from tests.support.rss import idle_spy, peak_mb, reset_peak, rss_mb
from tests.support.spy_watch import WAIT, Spy
from tests.support.web import cli_token


@pytest.fixture
def service(tmp_path: Path) -> Iterator[FieldbridgeProcess]:
    with FieldbridgeProcess(tmp_path / "svc") as process:
        process.start()
        yield process


def post(process: FieldbridgeProcess, body: object) -> httpx.Response:
    return httpx.post(process.ingest_url, json=body, timeout=10.0)


def test_spy_json_shows_accepted_and_refused_payloads_as_they_are_committed(
    service: FieldbridgeProcess,
) -> None:
    spy = Spy(service.config_path, "--json")
    try:
        assert spy.event() == {
            "type": "hello",
            "source": None,
            "topic": None,
            "queue_bytes": DEFAULT_QUEUE_BYTES,
        }
        assert post(
            service, {"device": "d1", "readings": {"t": {"value": 21.5, "unit": "C"}}}
        ).is_success
        assert post(service, {"device": "d1", "readings": {"t": "warm"}}).status_code == 422
        accepted, refused = spy.event(), spy.event()
    finally:
        spy.kill()
    assert accepted["type"] == "message" and accepted["outcome"] == "accepted"
    assert (accepted["source"], accepted["topic"], accepted["ids"]) == ("http", None, [1])
    [message] = accepted["messages"]
    assert message["device"] == "d1"
    assert [(r["quantity"], r["value"], r["unit"]) for r in message["readings"]] == [
        ("t", 21.5, "C")
    ]
    assert refused["outcome"] == "rejected"
    assert refused["reason"] == "readings.t: must be a number, a boolean or null, got string"
    assert refused["quarantine_id"] == 1


def test_spy_text_view_and_ctrl_c(service: FieldbridgeProcess) -> None:
    spy = Spy(service.config_path)
    try:
        assert "watching every source; Ctrl-C stops" in spy.line()
        post(service, {"device": "kit-7", "readings": {"t": 21.5, "h": 40}})
        post(service, [{"device": "kit-7", "readings": {"t": 1}}, {"device": "x"}])
        shown, refused = spy.line(), spy.line()
        spy.popen.send_signal(signal.SIGINT)
        code, rest, err = spy.finish()
    finally:
        spy.kill()
    assert " http kit-7 t=21.5 h=40" in shown
    assert "http refused [1].readings: must be a non-empty object" in refused
    assert code == 0, err
    assert "Traceback" not in err
    assert err.strip() == "stopped"
    assert rest == []


def test_filters_and_the_end_of_the_service_end_the_spy(service: FieldbridgeProcess) -> None:
    other = Spy(service.config_path, "--json", "--source", "mqtt-kits")
    topical = Spy(service.config_path, "--json", "--topic", "device/sck/+/readings")
    mine = Spy(service.config_path, "--json", "--source", "http")
    try:
        for spy in (other, topical, mine):
            assert spy.event()["type"] == "hello"
        post(service, {"device": "d1", "readings": {"t": 1}})
        assert mine.event()["source"] == "http"
        started = time.monotonic()
        service.terminate()
        assert service.wait(WAIT) == 0
        # Open spy streams do not hold the HTTP server's graceful shutdown: uvicorn did not
        # have to cancel them when its graceful timeout (5 s) ran out.
        assert "timeout graceful shutdown exceeded" not in service.output()
        assert time.monotonic() - started < WAIT  # only guards against a hang
        results = [spy.finish() for spy in (other, topical, mine)]
    finally:
        for spy in (other, topical, mine):
            spy.kill()
    for code, rest, err in results:
        assert code == 1
        assert rest == []  # an HTTP payload has no topic, and its source is not mqtt-kits
        assert "the service closed the stream (it is stopping or restarting)" in err


def test_spy_says_when_the_service_is_not_running(tmp_path: Path) -> None:
    process = FieldbridgeProcess(tmp_path / "off")
    done = run_cli("spy", config=process.config_path, timeout=20.0)
    assert done.returncode == 1
    assert f"fieldbridge is not running at http://127.0.0.1:{process.port}" in done.stderr
    assert "start it with `fieldbridge run`" in done.stderr


def test_spy_needs_the_token_when_http_tokens_are_set(tmp_path: Path) -> None:
    with FieldbridgeProcess(tmp_path / "auth", http={"tokens": ["s3cret"]}) as process:
        process.start()
        refused = httpx.get(f"{process.base_url}/api/v1/spy", timeout=5.0)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthenticated"
        spy = Spy(process.config_path, "--json", token="")  # sends the first of http.tokens
        try:
            assert spy.event()["type"] == "hello"
        finally:
            spy.kill()


def test_bad_filters_are_refused_with_the_reason(service: FieldbridgeProcess) -> None:
    token = cli_token(service.config_path)
    auth = {"Authorization": f"Bearer {token}"}
    answer = httpx.get(
        f"{service.base_url}/api/v1/spy", params={"topic": "a/#/b"}, headers=auth, timeout=5.0
    )
    assert answer.status_code == 400
    assert answer.json()["error"] == "topic: 'a/#/b': '#' must be a whole level and the last one"
    answer = httpx.get(
        f"{service.base_url}/api/v1/spy", params={"device": "x"}, headers=auth, timeout=5.0
    )
    assert answer.json()["error"] == "unknown query parameter 'device' (known: source, topic)"
    done = service.cli("spy", "--topic", "a+/b", "--token", token, timeout=20.0)
    assert done.returncode == 1
    assert "the service refused the spy (400): topic: 'a+/b': '+' must be a whole level" in (
        done.stderr
    )


# --- in process: the hub and the ingest tap ---------------------------------------------------


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'spy.db'}"
    upgrade(parse_store_url(url))
    return url


def body(n: int) -> bytes:
    return orjson.dumps({"device": f"dev-{n}", "readings": {"t": n}})


async def test_a_slow_watcher_loses_the_oldest_lines_beyond_its_bytes_and_is_told_how_many(
    sqlite_url: str,
) -> None:
    total, limit = 1000, 65_536  # about 250 bytes a line: four times what the queue holds
    metrics = Metrics()
    async with open_store(sqlite_url) as store, Ingest(store) as ingest:
        hub = SpyHub(ingest, queue_bytes=limit, metrics=metrics)
        watcher = hub.watch(None, None)
        outcomes = await asyncio.gather(
            *(ingest.submit("http", body(n), decode) for n in range(total))
        )
        assert all(isinstance(o, Accepted) for o in outcomes)
        assert limit - 1000 < watcher.queued_bytes <= limit
        stream = _stream(hub, watcher, b"hello\n")
        assert await anext(stream) == b"hello\n"
        dropped = orjson.loads(await anext(stream))
        kept: list[dict[str, object]] = []
        while watcher.lines:
            chunk = await anext(stream)
            assert len(chunk) <= CHUNK_BYTES
            kept += [orjson.loads(line) for line in chunk.splitlines()]
        await stream.aclose()
    assert dropped["type"] == "dropped" and dropped["count"] > total // 2
    devices = [event["messages"][0]["device"] for event in kept]  # type: ignore[index]
    assert devices == [f"dev-{n}" for n in range(dropped["count"], total)]
    assert (
        metrics.registry.get_sample_value("fieldbridge_spy_dropped_lines_total")
        == (dropped["count"])
    )
    assert hub.watchers == 0


async def test_a_line_larger_than_the_queue_shows_the_first_readings_and_counts_the_rest(
    sqlite_url: str,
) -> None:
    readings = {f"q{i:05d}": i for i in range(5000)}  # a line of about 600 KB
    payload = orjson.dumps([{"device": "big", "readings": readings}] * 20)
    async with open_store(sqlite_url) as store, Ingest(store) as ingest:
        hub = SpyHub(ingest, queue_bytes=65_536)
        watcher = hub.watch(None, None)
        assert isinstance(await ingest.submit("http", payload, decode), Accepted)
        [line] = watcher.lines
        hub.leave(watcher)
    event = orjson.loads(line)
    assert event["outcome"] == "accepted" and len(event["ids"]) == 20
    assert len(event["messages"]) == SHOWN_READINGS
    assert event["messages_omitted"] == 20 - SHOWN_READINGS
    first = event["messages"][0]
    assert [r["quantity"] for r in first["readings"]] == list(readings)[:SHOWN_READINGS]
    assert first["readings_omitted"] == 5000 - SHOWN_READINGS


async def test_the_tap_is_registered_only_while_someone_watches(sqlite_url: str) -> None:
    async with open_store(sqlite_url) as store, Ingest(store) as ingest:
        hub = SpyHub(ingest)
        first, second = hub.watch("http", None), hub.watch(None, "a/#")
        assert len(ingest.taps) == 1
        hub.leave(first)
        assert len(ingest.taps) == 1
        hub.leave(second)
        assert ingest.taps == ()
        hub.close()
        late = hub.watch(None, None)
        assert late.closed and hub.watchers == 0 and ingest.taps == ()


async def test_a_failing_tap_is_removed_and_ingest_goes_on(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("watcher bug")

    async with open_store(sqlite_url) as store, Ingest(store) as ingest:
        ingest.add_tap(broken)
        first = await ingest.submit("http", body(1), decode)
        second = await ingest.submit("http", body(2), decode)
    assert isinstance(first, Accepted) and isinstance(second, Accepted)
    assert ingest.taps == ()
    assert "ingest tap failed; removed" in caplog.text


# --- bounds against a real service: watchers that never read, and too many watchers --------


class SpyLimitedProcess(FieldbridgeProcess):
    """A service whose settings file also has a [spy] section."""

    def __init__(self, workdir: Path, spy: dict[str, object]) -> None:
        self._spy = spy
        super().__init__(workdir)

    def write_config(self) -> None:
        super().write_config()
        with self.config_path.open("a") as handle:
            handle.write(to_toml({"spy": self._spy}))


def readings_body(device: str, size: int) -> bytes:
    """One message whose readings fill about `size` bytes."""
    return orjson.dumps(
        {"device": device, "readings": {f"q{i:07d}": i % 1000 / 10 for i in range(size // 16)}}
    )


def test_two_watchers_that_never_read_keep_the_service_small(tmp_path: Path) -> None:
    # The attack of issue 10: 120 posts of 650 KB grew the process to 1.16 GB. 40 posts make
    # 16 lines of several MB each, far beyond a watcher's queue, in a bounded time.
    posts, size = 16, 650_000
    with SpyLimitedProcess(tmp_path / "mem", {"queue_bytes": 1_048_576}) as process:
        process.start()
        assert post(process, {"device": "warm", "readings": {"t": 1}}).is_success
        assert process.pid is not None
        token = cli_token(process.config_path)
        idle = rss_mb(process.pid)
        reset_peak(process.pid)  # what start-up took (a password hash, say) is not growth
        watchers = [idle_spy(process.port, token), idle_spy(process.port, token)]
        try:
            with httpx.Client(timeout=60.0) as client:
                for n in range(posts):
                    answer = client.post(
                        process.ingest_url,
                        content=readings_body(f"big-{n}", size),
                        headers={"Content-Type": "application/json"},
                    )
                    assert answer.status_code == 200, answer.text
            growth = peak_mb(process.pid) - idle
            metrics = httpx.get(f"{process.base_url}/metrics", timeout=10.0).text
        finally:
            for sock in watchers:
                sock.close()
    print(f"idle {idle:.0f} MB, grew by {growth:.0f} MB")
    assert growth < 50, f"the service grew by {growth:.0f} MB (idle {idle:.0f} MB)"
    assert "fieldbridge_spy_dropped_lines_total" in metrics


def test_watchers_beyond_max_watchers_get_503_until_one_leaves(tmp_path: Path) -> None:
    with SpyLimitedProcess(tmp_path / "cap", {"max_watchers": 2}) as process:
        process.start()
        token = cli_token(process.config_path)
        auth = {"Authorization": f"Bearer {token}"}
        first, second = idle_spy(process.port, token), idle_spy(process.port, token)
        try:
            refused = httpx.get(f"{process.base_url}/api/v1/spy", headers=auth, timeout=5.0)
            assert refused.status_code == 503
            assert refused.json() == {
                "error": "2 spies are watching already (spy.max_watchers); close one or raise "
                "spy.max_watchers"
            }
            assert refused.headers["retry-after"] == "10"
            first.close()

            def admitted() -> bool:
                # The server notices a closed watcher when it next writes to it: give it a line.
                assert post(process, {"device": "d1", "readings": {"t": 1}}).is_success
                with httpx.stream(
                    "GET", f"{process.base_url}/api/v1/spy", headers=auth, timeout=5.0
                ) as r:
                    return r.status_code == 200

            wait_until(admitted, "a spy admitted after one of two left")
        finally:
            first.close()
            second.close()
