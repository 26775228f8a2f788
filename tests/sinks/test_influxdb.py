"""The InfluxDB sink against a real influxd 1.x started by the tests (tests/support/influxd.py):
every point read back with InfluxQL, exactly once, with its tags and time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from fieldbridge.codecs import build_codec, http_json
from fieldbridge.config import load_settings
from fieldbridge.ingest import Ingest
from fieldbridge.model import Accepted, SinkRunState
from fieldbridge.plugin import RouteSettings
from fieldbridge.sinks.engine import SinkRunner
from fieldbridge.sinks.influxdb import InfluxDBDestination
from fieldbridge.sinks.influxdb_settings import InfluxDBSettings
from fieldbridge.store import Store
from tests.conftest import eventually
from tests.fakes.influxdb_v2 import FakeInfluxDBv2
from tests.support import paths
from tests.support.influxd import ADMIN, Influxd
from tests.support.processes import run_cli, to_toml
from tests.support.sinks import run_sink

SINK = "influx"
DB = "aklc"
T0 = 1_764_800_000.0  # 2025-12-03; message n is measured at T0 + n + 0.25 s
NS = 1_000_000_000

pytestmark = pytest.mark.xdist_group("influxd")


def message(device: str, n: int, readings: dict[str, Any] | None = None) -> bytes:
    body = {
        "device": device,
        "kind": "trap",
        "ts": T0 + n + 0.25,
        "readings": readings if readings is not None else {"level": n, "temp": n / 10},
        "id": f"{device}-{n}",
    }
    return json.dumps(body).encode()


async def ingest(store: Store, payloads: list[bytes]) -> list[int]:
    """Through the real ingest path, 500 at a time (one group commit each); journal ids."""
    ids: list[int] = []
    async with Ingest(store) as feed:
        for start in range(0, len(payloads), 500):
            outcomes = await asyncio.gather(
                *(
                    feed.submit("http", payload, http_json.decode, {})
                    for payload in payloads[start : start + 500]
                )
            )
            for outcome in outcomes:
                assert isinstance(outcome, Accepted), outcome
                ids.extend(outcome.ids)
    return sorted(ids)


def settings(url: str, **overrides: Any) -> InfluxDBSettings:
    values: dict[str, Any] = {
        "name": SINK,
        "url": url,
        "database": DB,
        "timeout": 5.0,
        "max_backoff": 0.5,
    }
    values.update(overrides)
    return InfluxDBSettings(**values)


class Answers(httpx.AsyncHTTPTransport):
    """httpx's own transport, noting the status of every answer (the destination's seam)."""

    def __init__(self) -> None:
        super().__init__()
        self.statuses: list[int] = []
        self.in_flight = 0
        self.most_in_flight = 0  # requests sent and not yet answered at once

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            response = await super().handle_async_request(request)
        finally:
            self.in_flight -= 1
        self.statuses.append(response.status_code)
        return response


@contextlib.asynccontextmanager
async def running(
    store: Store, sink: InfluxDBSettings, transport: httpx.AsyncBaseTransport | None = None
) -> AsyncIterator[SinkRunner]:
    destination = InfluxDBDestination(sink, transport)
    runner = SinkRunner("influxdb", sink, destination, store, backoff_base=0.05, idle_poll=0.1)
    async with run_sink(runner):
        yield runner


async def cursor_is(store: Store, value: int, within: float = 30.0) -> None:
    async def check() -> bool:
        return (await store.sink_state(SINK)).cursor == value

    await eventually(check, f"the cursor at {value}", timeout=within)


@pytest.fixture(scope="module")
def influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Influxd]:
    with Influxd(tmp_path_factory.mktemp("influxd")) as server:
        yield server


@pytest.fixture
def db(influx: Influxd) -> Iterator[str]:
    influx.create_database(DB)
    yield DB
    influx._query(f'DROP DATABASE "{DB}"')


async def test_flagged_devices_arrive_once_with_tags_and_time(
    store: Store, influx: Influxd, db: str
) -> None:
    payloads = [message(d, n) for n in range(30) for d in ("trap-a", "trap-b", "trap-c")]
    ids = await ingest(store, payloads)
    for device in ("trap-a", "trap-b"):  # trap-c's flag stays off
        await store.update_device(device, flags={"influx": True}, team="Hunua")
    sink = settings(influx.url, batch_size=7, route=RouteSettings(flag="influx"))
    async with running(store, sink):
        await cursor_is(store, ids[-1])
    level = influx.series(db, 'SELECT "value" FROM "level" GROUP BY *')
    assert {s["tags"]["device"] for s in level} == {"trap-a", "trap-b"}
    for series in level:
        assert series["tags"] == {
            "device": series["tags"]["device"],
            "kind": "trap",
            "channel": "0",
            "team": "Hunua",
        }
        expected = [[round((T0 + n + 0.25) * 1000) * 1_000_000, float(n)] for n in range(30)]
        assert series["values"] == expected  # ms precision, each point once, in time order
    temp = influx.query(db, 'SELECT count("value") FROM "temp"')
    assert temp[0][1] == 60


@pytest.mark.parametrize(
    ("precision", "scale"), [("s", NS), ("ms", 1_000_000), ("us", 1_000), ("ns", 1)]
)
async def test_precision_is_the_measured_time(
    store: Store, influx: Influxd, db: str, precision: str, scale: int
) -> None:
    ids = await ingest(store, [message("p", 1, {"level": 1.5})])
    async with running(store, settings(influx.url, precision=precision)):
        await cursor_is(store, ids[-1])
    per_unit = NS // scale
    expected = round((T0 + 1.25) * per_unit) * scale
    assert influx.query(db, 'SELECT "value" FROM "level"') == [[expected, 1.5]]


# Text -> how InfluxDB stores it as a measurement, a tag value and a field key (spec §4.3).
# Line protocol escapes commas and spaces (and equals signs outside measurements). A backslash
# right before a character InfluxDB unescapes there (comma, space, equals sign; a quote too in
# measurements and field keys), or at the end, cannot be carried: dropped. A leading '#' would
# make a comment line; "time" is refused as a key.
CHARACTER_CLASSES = [
    ("a,b c=d", "a,b c=d", "a,b c=d", "a,b c=d"),
    ('q"uote', 'q"uote', 'q"uote', 'q"uote'),
    ("back\\slash", "back\\slash", "back\\slash", "back\\slash"),
    ("two\\\\slashes", "two\\\\slashes", "two\\\\slashes", "two\\\\slashes"),
    ("b\\,c", "b,c", "b,c", "b,c"),
    ("b\\ c", "b c", "b c", "b c"),
    ("b\\=c", "b=c", "b=c", "b=c"),
    ('b\\"c', 'b"c', 'b\\"c', 'b"c'),
    ("tail\\", "tail", "tail", "tail"),
    ("tails\\\\", "tails", "tails", "tails"),
    ("#hash", "\\#hash", "#hash", "#hash"),
    ("ünï cødé ✓ 水", "ünï cødé ✓ 水", "ünï cødé ✓ 水", "ünï cødé ✓ 水"),
    ("time", "time", "time", "time_"),
    (" lead,=", " lead,=", " lead,=", " lead,="),
]
# Tag keys follow the tag value rules; the reserved key "time" is renamed.
STATIC_TAGS = {"site=1, a": "b,c =d", "time": "t", 'k\\,q"': 'v\\"'}
STORED_STATIC_TAGS = {"site=1, a": "b,c =d", "time_": "t", 'k,q"': 'v\\"'}
Stored = tuple[str, tuple[tuple[str, str], ...], tuple[tuple[str, Any], ...], int]


def stored(measurement: str, tags: dict[str, str], fields: dict[str, Any], ns: int) -> Stored:
    return measurement, tuple(sorted(tags.items())), tuple(sorted(fields.items())), ns


async def write_character_classes(store: Store) -> tuple[list[int], list[Stored]]:
    """One message per class (the text as device and as quantity); what the default naming
    (plus STATIC_TAGS, and a team with a newline for the first device) and a second sink
    naming fields by quantity (measurement "keys") must store."""
    payloads = [
        json.dumps({"device": raw, "ts": T0 + i, "readings": {raw: float(i)}, "id": f"c{i}"})
        for i, (raw, *_) in enumerate(CHARACTER_CLASSES)
    ]
    ids = await ingest(store, [p.encode() for p in payloads])
    await store.update_device(CHARACTER_CLASSES[0][0], team="line\nbreak")
    expected = []
    for i, (_, measurement, tag, field_key) in enumerate(CHARACTER_CLASSES):
        ns = round((T0 + i) * 1000) * 1_000_000
        tags = {"device": tag, "channel": "0", **STORED_STATIC_TAGS}
        if i == 0:
            tags["team"] = "line\\nbreak"  # a newline cannot be in a tag: written as \\n
        expected.append(stored(measurement, tags, {"value": float(i)}, ns))
        expected.append(stored("keys", {}, {field_key: float(i)}, ns))
    return ids, expected


def character_sinks(make: Any) -> tuple[InfluxDBSettings, InfluxDBSettings]:
    return (
        make(static_tags=STATIC_TAGS),
        make(name="influx-keys", measurement="keys", field="{quantity}", tags=[]),
    )


async def both_at(store: Store, value: int) -> None:
    async def check() -> bool:
        states = [await store.sink_state(name) for name in (SINK, "influx-keys")]
        return all(state.cursor == value for state in states)

    await eventually(check, f"both cursors at {value}", timeout=30)


async def test_every_character_class_survives_the_line_protocol(
    store: Store, influx: Influxd, db: str
) -> None:
    """Spec §4.3 on a real influxd: measurements (comma, space), tag keys and values and field
    keys (comma, equals sign, space), backslashes before each, quotes, unicode, '#', "time"."""
    ids, expected = await write_character_classes(store)
    values_sink, keys_sink = character_sinks(lambda **o: settings(influx.url, **o))
    async with running(store, values_sink), running(store, keys_sink):
        await both_at(store, ids[-1])
    assert await store.count_dead_letters(SINK) == 0
    assert await store.count_dead_letters("influx-keys") == 0
    got = []
    for series in influx.series(db, "SELECT * FROM /.*/ GROUP BY *"):
        tags = {k: v for k, v in series["tags"].items() if v}
        for ns, *values in series["values"]:
            fields = {k: v for k, v in zip(series["columns"][1:], values, strict=True)}
            got.append(
                stored(series["name"], tags, {k: v for k, v in fields.items() if v is not None}, ns)
            )
    assert sorted(got) == sorted(expected)


async def test_the_v2_fake_reads_every_character_class_as_influxd_does(
    store: Store, v2: FakeInfluxDBv2
) -> None:
    """The same classes through the v2 API to the fake: it must store what influxd stores."""
    ids, expected = await write_character_classes(store)
    values_sink, keys_sink = character_sinks(lambda **o: v2_settings(v2, **o))
    async with running(store, values_sink), running(store, keys_sink):
        await both_at(store, ids[-1])
    got = [stored(p.measurement, p.tags, p.fields, p.time_ns) for p in v2.points]
    assert sorted(got) == sorted(expected)


# String field values carry any text: quotes and backslashes escaped, newlines as they are.
STRING_FIELDS = [
    'GW "1" \\ back\\slash',
    "tail\\",
    'q\\"x',
    "two\\\\",
    "new\nline",
    "tab\tand\r",
    "ünï ✓ 水",
    "",
    "a=b, c d",
    '"',
    "\\",
]


async def ingest_trap_events(store: Store) -> list[int]:
    """One trap event per STRING_FIELDS text as its Gateway, from Trap0, Trap1, ..."""
    codec = build_codec("trapnet", {}, setting="sources.mqtt[0].codec")
    ids = []
    async with Ingest(store) as feed:
        for i, gateway in enumerate(STRING_FIELDS):
            event = {"NodeID": f"Trap{i}", "Event": "T", "State": "C", "Gateway": gateway}
            outcome = await feed.submit(
                "aklc", json.dumps(event).encode(), codec, {"topic": "EnvironmentalServices/x"}, T0
            )
            assert isinstance(outcome, Accepted), outcome
            ids.extend(outcome.ids)
    return ids


async def test_trap_events_become_text_fields_with_quotes_and_backslashes(
    store: Store, influx: Influxd, db: str
) -> None:
    """A reading without a number (a trap-network trap event) is written as its details."""
    ids = await ingest_trap_events(store)
    async with running(store, settings(influx.url)):
        await cursor_is(store, ids[-1])
    got = {}
    for series in influx.series(
        db, 'SELECT "event", "state", "gateway" FROM "trap_event" GROUP BY *'
    ):
        [[ns, event, state, gateway]] = series["values"]
        assert (ns, event, state) == (round(T0 * 1000) * 1_000_000, "T", "C")
        got[series["tags"]["device"]] = gateway
    assert got == {f"Trap{i}": text for i, text in enumerate(STRING_FIELDS)}


async def test_the_v2_fake_reads_string_fields_as_influxd_does(
    store: Store, v2: FakeInfluxDBv2
) -> None:
    ids = await ingest_trap_events(store)
    async with running(store, v2_settings(v2)):
        await cursor_is(store, ids[-1])
    got = {p.tags["device"]: p.fields["gateway"] for p in v2.series("trap_event")}
    assert got == {f"Trap{i}": text for i, text in enumerate(STRING_FIELDS)}


async def test_partial_write_dead_letters_only_the_refused_messages(
    store: Store, influx: Influxd, db: str
) -> None:
    # "level" already holds text in InfluxDB: a number for it is a field type conflict.
    async with httpx.AsyncClient() as client:
        answer = await client.post(
            f"{influx.url}/write",
            params={"db": db},
            content=f'level value="text" {int(T0) * NS}'.encode(),
        )
    answer.raise_for_status()
    payloads = [
        message("mix", n, {"level": n, "temp": n / 10} if n % 3 == 0 else {"temp": n / 10})
        for n in range(30)
    ]
    ids = await ingest(store, payloads)
    answers = Answers()
    async with running(store, settings(influx.url, batch_size=30), answers):
        await cursor_is(store, ids[-1])
    dead = await store.list_dead_letters(sink=SINK)
    assert sorted(d.message_id for d in dead) == [ids[n] for n in range(0, 30, 3)]
    assert all("field type conflict" in d.body and d.status == 400 for d in dead)
    # The answer named the lines: no halving; the rest sent once more, to confirm (InfluxDB may
    # name one conflict of several), and taken whole.
    assert answers.statuses == [400, 204]
    assert influx.query(db, 'SELECT count("value") FROM "temp"')[0][1] == 30
    assert influx.query(db, 'SELECT count("value") FROM "level"')[0][1] == 1  # the text only


async def pre_write(influx: Influxd, db: str, line: str) -> None:
    """A point written by someone else before the sink starts."""
    async with httpx.AsyncClient() as client:
        answer = await client.post(f"{influx.url}/write", params={"db": db}, content=line)
    answer.raise_for_status()


async def test_conflicts_the_answer_does_not_name_are_found_by_halving(
    store: Store, influx: Influxd, db: str
) -> None:
    """influxd names only the first field type conflict of a request (and refuses a request
    whose own points conflict outright): the sink halves until each refusal is one message."""
    await pre_write(influx, db, f'level value="text" {int(T0) * NS}')
    codec = build_codec("trapnet", {}, setting="sources.mqtt[0].codec")
    topic = {"topic": "EnvironmentalServices/x"}

    async def trap_event(node: str, event: object) -> int:
        body = json.dumps({"NodeID": node, "Event": event, "State": "C"}).encode()
        async with Ingest(store) as feed:
            outcome = await feed.submit("aklc", body, codec, topic, T0)
        assert isinstance(outcome, Accepted), outcome
        return outcome.ids[0]

    text_event = await trap_event("Trap0", "T")  # first: "event" is text in trap_event
    ids = await ingest(
        store,
        [
            message("mix", n, {"level": n, "temp": n} if n % 4 == 0 else {"temp": n})
            for n in range(16)
        ],
    )
    number_event = await trap_event("Trap1", 1)  # "event" as a number: a conflict
    answers = Answers()
    async with running(store, settings(influx.url, batch_size=100), answers):
        await cursor_is(store, number_event)
    dead = await store.list_dead_letters(sink=SINK)
    assert sorted(d.message_id for d in dead) == [ids[n] for n in range(0, 16, 4)] + [number_event]
    assert all("field type conflict" in d.body for d in dead)
    assert answers.statuses.count(400) > 1  # halved
    assert influx.query(db, 'SELECT count("value") FROM "temp"')[0][1] == 16
    assert influx.query(db, 'SELECT "event" FROM "trap_event"') == [[int(T0) * NS, "T"]]
    assert text_event not in {d.message_id for d in dead}


async def test_points_beyond_the_retention_policy_are_found_by_halving(
    store: Store, influx: Influxd, db: str
) -> None:
    """`partial write: points beyond retention policy dropped=N` names no line: halving finds
    the messages measured too long ago; the others arrive."""
    influx._query(f'CREATE RETENTION POLICY "hour" ON "{db}" DURATION 1h REPLICATION 1')
    now = time.time()
    payloads = [
        json.dumps(
            {
                "device": "late",
                "ts": now - (7200 if n % 4 == 0 else 60) + n,
                "readings": {"level": n},
                "id": f"late-{n}",
            }
        ).encode()
        for n in range(12)
    ]
    ids = await ingest(store, payloads)
    async with running(store, settings(influx.url, retention_policy="hour", batch_size=100)):
        await cursor_is(store, ids[-1])
    dead = await store.list_dead_letters(sink=SINK)
    assert sorted(d.message_id for d in dead) == [ids[n] for n in range(0, 12, 4)]
    assert all("points beyond retention policy" in d.body for d in dead)
    rows = influx.query(db, 'SELECT "value" FROM "hour"."level"')
    assert [value for _, value in rows] == [float(n) for n in range(12) if n % 4]


def sinks_status(store_url: str, sink: InfluxDBSettings, workdir: Path) -> list[dict[str, Any]]:
    """`fieldbridge sinks status --json` on the store, with this sink in the settings."""
    config = workdir / "status.toml"
    entry = sink.model_dump(mode="json", exclude_none=True)
    entry["password"] = sink.password.get_secret_value() if sink.password else None
    config.write_text(
        to_toml(
            {
                "store": {"url": store_url},
                "sinks": {"influxdb": [{k: v for k, v in entry.items() if v is not None}]},
            }
        )
    )
    done = run_cli("sinks", "status", "--json", config=config, cwd=workdir)
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return rows


async def test_wrong_credentials_keep_messages_and_show_failing(
    store: Store, store_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """401 (wrong password) and 403 (a user who may only read) are the destination failing,
    shown in `fieldbridge sinks status`: every message is kept, none dead-lettered."""
    with Influxd(tmp_path / "auth", auth=True) as secured:
        secured.create_database(DB)
        secured._query("CREATE USER reader WITH PASSWORD 'reader-secret'")
        secured._query(f'GRANT READ ON "{DB}" TO reader')
        ids = await ingest(store, [message("a", n) for n in range(5)])
        for user, password, status, hint in (
            (ADMIN[0], "wrong-secret", 401, "check `username` and `password`"),
            ("reader", "reader-secret", 403, "needs WRITE on database 'aklc'"),
        ):
            sink = settings(secured.url, username=user, password=password)
            async with running(store, sink) as runner:

                async def failing(status: int = status) -> bool:
                    state = await store.sink_state(SINK)
                    return runner.state == SinkRunState.FAILING and f"HTTP {status}" in (
                        state.last_error or ""
                    )

                await eventually(failing, f"the sink failing with {status}")
                [row] = await asyncio.to_thread(sinks_status, store_url, sink, tmp_path)
            assert row["state"] == "failing", row
            assert f"HTTP {status}" in row["last_error"] and hint in row["last_error"], row
            assert (row["cursor"], row["dead_letters"]) == (0, 0)
            assert password not in json.dumps(row) and password not in caplog.text
        right = settings(secured.url, username=ADMIN[0], password=ADMIN[1])
        async with running(store, right):
            await cursor_is(store, ids[-1])
        assert secured.query(DB, 'SELECT count("value") FROM "level"')[0][1] == 5
    assert await store.count_dead_letters(SINK) == 0


async def test_unknown_database_is_failing_not_dead_letters(store: Store, influx: Influxd) -> None:
    ids = await ingest(store, [message("a", n) for n in range(3)])
    async with running(store, settings(influx.url, database="nope")) as runner:

        async def failing() -> bool:
            return runner.state == SinkRunState.FAILING

        await eventually(failing, "the sink failing on a missing database")
        influx.create_database("nope")
        await cursor_is(store, ids[-1])
    assert await store.count_dead_letters(SINK) == 0
    influx._query('DROP DATABASE "nope"')


def test_settings_name_what_is_wrong() -> None:
    with pytest.raises(ValidationError, match="database: set `database`"):
        InfluxDBSettings(name="x", url="http://127.0.0.1:8086")
    with pytest.raises(ValidationError, match="not both"):
        InfluxDBSettings(name="x", url="http://h:1", database="d", bucket="b")
    with pytest.raises(ValidationError, match=r"org: InfluxDB 2\.x needs"):
        InfluxDBSettings(name="x", url="http://h:1", bucket="b", token="t")
    with pytest.raises(ValidationError, match="unknown tag 'colour'"):
        InfluxDBSettings(name="x", url="http://h:1", database="d", tags=["colour"])
    with pytest.raises(ValidationError, match=r"unknown name \{colour\}"):
        InfluxDBSettings(name="x", url="http://h:1", database="d", measurement="{colour}")
    with pytest.raises(ValidationError, match="lines_per_request"):
        InfluxDBSettings(name="x", url="http://h:1", database="d", lines_per_request=5001)


def test_the_docs_examples_are_valid_settings(tmp_path: Path) -> None:
    page = (paths.DOCS / "integrations" / "influxdb.md").read_text()
    v1, v2 = re.findall(r"^```toml\n(.*?)^```", page, re.S | re.M)[:2]
    loaded = []
    for n, example in enumerate((v1, v2)):
        config = tmp_path / f"example{n}.toml"
        config.write_text(example)
        ((kind, sink),) = load_settings(config).sink_settings
        assert kind == "influxdb" and isinstance(sink, InfluxDBSettings)
        loaded.append(sink)
    assert (loaded[0].database, loaded[0].route.flag, loaded[0].v2) == ("aklc", "influx", False)
    assert (loaded[1].org, loaded[1].bucket, loaded[1].v2) == ("council", "sensors", True)


def test_config_show_masks_the_password_and_the_token(tmp_path: Path) -> None:
    config = tmp_path / "fieldbridge.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path / "fb.db"}"\n'
        '[[sinks.influxdb]]\nname = "v1"\nurl = "http://127.0.0.1:8086"\ndatabase = "aklc"\n'
        'username = "fieldbridge"\npassword = "v1-Secret-pw"\n'
        '[[sinks.influxdb]]\nname = "v2"\nurl = "http://127.0.0.1:8086"\norg = "o"\n'
        'bucket = "b"\ntoken = "v2-Secret-token"\n'
    )
    done = run_cli("config", "show", "--json", config=config)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)["sinks"]["influxdb"]
    assert [s["password"] for s in shown] == ["**********", None]
    assert [s["token"] for s in shown] == [None, "**********"]
    text = run_cli("config", "show", config=config)
    assert text.returncode == 0, text.stderr
    for output in (done.stdout, text.stdout, text.stderr):
        assert "v1-Secret-pw" not in output and "v2-Secret-token" not in output


# --- InfluxDB 2.x: the v2 write API against tests/fakes/influxdb_v2.py ------------------------


def v2_settings(fake: FakeInfluxDBv2, **overrides: Any) -> InfluxDBSettings:
    values: dict[str, Any] = {
        "name": SINK,
        "url": fake.url,
        "org": fake.org,
        "bucket": "sensors",
        "token": fake.token,
        "timeout": 5.0,
        "max_backoff": 0.5,
    }
    values.update(overrides)
    return InfluxDBSettings(**values)


@pytest.fixture
async def v2() -> AsyncIterator[FakeInfluxDBv2]:
    async with FakeInfluxDBv2() as fake:
        yield fake
    assert fake.violations == []


async def test_v2_writes_in_requests_of_at_most_5000_lines(
    store: Store, v2: FakeInfluxDBv2
) -> None:
    ids = await ingest(store, [message(f"d{n % 10}", n) for n in range(6_000)])
    answers = Answers()
    async with running(store, v2_settings(v2, batch_size=6_000), answers):
        await cursor_is(store, ids[-1])
    assert len(v2.series("level")) == 6_000 and len(v2.series("temp")) == 6_000
    assert max(lines for _, _, lines in v2.requests) <= 5_000
    assert len(v2.requests) >= 3  # 12,000 lines in one batch: several requests at once
    assert answers.most_in_flight >= 2
    # Each point written once, and each series' points in the order they were measured,
    # though the requests went several at a time.
    assert len(v2.arrivals) == 12_000
    last: dict[tuple[Any, ...], int] = {}
    for series, ns in v2.arrivals:
        assert ns > last.get(series, -1), series
        last[series] = ns
    assert v2.gzipped == len(v2.requests)
    first = min(v2.series("level"), key=lambda p: p.time_ns)
    assert first.tags == {"device": "d0", "kind": "trap", "channel": "0"}
    assert first.fields == {"value": 0.0}
    assert first.time_ns == round((T0 + 0.25) * 1000) * 1_000_000


@pytest.mark.parametrize("status", [429, 503])
async def test_v2_retry_after_is_honoured(store: Store, v2: FakeInfluxDBv2, status: int) -> None:
    ids = await ingest(store, [message("a", n) for n in range(3)])
    v2.busy(status, "1", times=2)
    async with running(store, v2_settings(v2)):
        await cursor_is(store, ids[-1])
    times = [at for at, _, _ in v2.requests]
    assert [s for _, s, _ in v2.requests] == [status, status, 204]
    assert times[1] - times[0] >= 0.95 and times[2] - times[1] >= 0.95  # not the 0.5 s cap
    assert len(v2.series("level")) == 3


async def test_v2_partial_write_422_dead_letters_the_refused(
    store: Store, v2: FakeInfluxDBv2
) -> None:
    texts = json.dumps({"device": "x", "ts": T0, "readings": {"level": 1}, "id": "x"}).encode()
    ids = await ingest(store, [texts])
    async with running(store, v2_settings(v2, field="{quantity}", measurement="{source}")):
        await cursor_is(store, ids[-1])
    v2._types[("http", "temp")] = "string"  # as if another writer had put text there
    ids = await ingest(store, [message("m", n) for n in range(4)])
    async with running(store, v2_settings(v2, field="{quantity}", measurement="{source}")):
        await cursor_is(store, ids[-1])
    dead = await store.list_dead_letters(sink=SINK)
    assert sorted(d.message_id for d in dead) == ids
    assert all(d.status == 422 and "field type conflict" in d.body for d in dead)


async def test_v2_bad_token_or_bucket_is_failing(store: Store, v2: FakeInfluxDBv2) -> None:
    ids = await ingest(store, [message("a", n) for n in range(3)])
    for wrong, hint in (
        ({"token": "nope"}, "HTTP 401: unauthorized access (check `token`"),
        ({"bucket": "missing"}, "HTTP 404: bucket not found (check `org` and `bucket`"),
    ):
        async with running(store, v2_settings(v2, **wrong)) as runner:

            async def failing(r: SinkRunner = runner, hint: str = hint) -> bool:
                state = await store.sink_state(SINK)
                return r.state == SinkRunState.FAILING and hint in (state.last_error or "")

            await eventually(failing, f"the sink failing with {wrong}")
        assert "nope" not in ((await store.sink_state(SINK)).last_error or "")
    assert v2.points == [] and await store.count_dead_letters(SINK) == 0
    async with running(store, v2_settings(v2)):
        await cursor_is(store, ids[-1])


async def test_v2_an_oversized_request_is_halved_and_an_oversized_message_dead_lettered(
    store: Store, v2: FakeInfluxDBv2
) -> None:
    """413: the request is halved until it fits; a message that alone is over the server's
    limit is dead-lettered with the answer."""
    v2.max_body = 20_000
    huge = {f"q{n}": n for n in range(600)}  # about 36 kB of lines
    payloads = [message("a", n) for n in range(100)]
    payloads.insert(50, message("huge", 50, huge))
    ids = await ingest(store, payloads)
    async with running(store, v2_settings(v2, batch_size=500)):
        await cursor_is(store, ids[-1])
    dead = await store.list_dead_letters(sink=SINK)
    assert [(d.message_id, d.status) for d in dead] == [(ids[50], 413)]
    assert "points batch is too large" in dead[0].body
    assert len(v2.series("level")) == 100 and len(v2.series("temp")) == 100
    assert all(status in (204, 413) for _, status, _ in v2.requests)


async def test_v2_precision_and_plain_bodies(store: Store, v2: FakeInfluxDBv2) -> None:
    ids = await ingest(store, [message("p", n, {"level": n}) for n in range(3)])
    async with running(store, v2_settings(v2, precision="us", gzip=False)):
        await cursor_is(store, ids[-1])
    assert v2.gzipped == 0
    assert sorted(p.time_ns for p in v2.series("level")) == [
        round((T0 + n + 0.25) * 1_000_000) * 1_000 for n in range(3)
    ]
