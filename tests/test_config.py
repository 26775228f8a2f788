"""load_settings: defaults, the TOML file, environment overrides, errors that name the key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import pytest

from fieldbridge.config import (
    CONFIG_ENV,
    HttpSettings,
    IngestSettings,
    LogSettings,
    Settings,
    StoreSettings,
    load_settings,
)
from fieldbridge.errors import ConfigError
from fieldbridge.sinks.webhook import WebhookSettings
from fieldbridge.sources.http import HttpSourceSettings

MASK = "**********"

FULL = """
[store]
url = "sqlite:///{db}"
synchronous = "normal"
busy_timeout_ms = 250

[http]
listen = "127.0.0.1:0"
max_body_bytes = 4096
tokens = ["alpha"]

[ingest]
batch_size = 64
flush_ms = 2.5

[log]
level = "debug"
levels = {{ "fieldbridge.sinks" = "warning" }}

[[sinks.webhook]]
name = "hook-a"
url = "http://127.0.0.1:9000/a"
batch_size = 10
headers = {{ Authorization = "Bearer hush" }}

[sinks.webhook.route]
sources = ["http"]
flag = "upload_a"

[[sinks.webhook]]
name = "hook-b"
url = "http://127.0.0.1:9000/b"
enabled = false
"""


@pytest.fixture(autouse=True)
def in_tmp_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no fieldbridge.toml of the checkout is found


def write(tmp_path: Path, text: str, name: str = "fieldbridge.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def full_file(tmp_path: Path) -> Path:
    return write(tmp_path, FULL.format(db=tmp_path / "store.db"))


def test_defaults_without_any_file() -> None:
    settings = load_settings()
    assert settings.store == StoreSettings()
    assert settings.store.url == "sqlite:///var/fieldbridge.db"
    assert settings.store.synchronous == "full"
    assert settings.http == HttpSettings()
    assert settings.http.listen == "127.0.0.1:8080"
    assert settings.ingest == IngestSettings(batch_size=500, flush_ms=5.0, queue_bound=10_000)
    assert settings.log == LogSettings()
    # One sink: every message again as JSON on the local broker, something to watch.
    assert [(t, s.name) for t, s in settings.sink_settings] == [("mqtt", "local-mqtt")]
    # The default run takes MQTT with an embedded broker and Efento CoAP, besides HTTP.
    sources = [
        (t, s.name, getattr(s, "embedded_broker", None)) for t, s in settings.source_settings
    ]
    # HTTP ingest on POST /api/v1/ingest, MQTT (generic JSON, Smart Citizen Kits, the trap
    # network) and Efento sensors on this machine's UDP 5683.
    assert sources == [
        ("http", "http", None),
        ("mqtt", "mqtt", "auto"),
        ("mqtt", "smartcitizen", "auto"),
        ("mqtt", "trapnet", "auto"),
        ("efento", "efento", None),
    ]


def test_file_values_are_typed(tmp_path: Path) -> None:
    settings = load_settings(full_file(tmp_path))
    assert settings.store.url == f"sqlite:///{tmp_path / 'store.db'}"
    assert settings.store.synchronous == "normal"
    assert settings.store.busy_timeout_ms == 250
    assert settings.store.retention_days == 30.0  # not in the file: the default
    assert settings.http.listen == "127.0.0.1:0"
    assert settings.http.max_body_bytes == 4096
    assert settings.http.tokens == ["alpha"]
    assert settings.ingest.batch_size == 64
    assert settings.ingest.flush_ms == 2.5
    assert settings.ingest.queue_bound == 10_000
    assert settings.log.level == "debug"
    assert settings.log.levels == {"fieldbridge.sinks": "warning"}

    sinks = settings.sink_settings
    assert [(t, s.name) for t, s in sinks] == [("webhook", "hook-a"), ("webhook", "hook-b")]
    hook_a, hook_b = (s for _, s in sinks)
    assert isinstance(hook_a, WebhookSettings) and isinstance(hook_b, WebhookSettings)
    assert str(hook_a.url) == "http://127.0.0.1:9000/a"
    assert hook_a.batch_size == 10
    assert hook_a.headers["Authorization"].get_secret_value() == "Bearer hush"
    assert hook_a.route.sources == ["http"]
    assert hook_a.route.kinds == []
    assert hook_a.route.flag == "upload_a"
    assert hook_a.enabled is True
    assert hook_b.enabled is False
    assert hook_b.batch_size == 500
    assert hook_b.timeout == 10.0


def test_config_env_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(full_file(tmp_path)))
    settings = load_settings()
    assert settings.ingest.batch_size == 64
    assert [s.name for _, s in settings.sink_settings] == ["hook-a", "hook-b"]


def test_explicit_path_beats_config_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(full_file(tmp_path)))
    other = write(tmp_path, "[ingest]\nbatch_size = 7\n", "other.toml")
    assert load_settings(other).ingest.batch_size == 7


def test_environment_beats_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = full_file(tmp_path)
    monkeypatch.setenv("FIELDBRIDGE_STORE__URL", "postgresql://fb@db.example/fb")
    monkeypatch.setenv("FIELDBRIDGE_INGEST__BATCH_SIZE", "1000")
    monkeypatch.setenv("FIELDBRIDGE_HTTP__LISTEN", "0.0.0.0:9999")
    settings = load_settings(path)
    assert settings.store.url == "postgresql://fb@db.example/fb"
    assert settings.ingest.batch_size == 1000
    assert settings.http.listen == "0.0.0.0:9999"
    # The other keys of the same sections still come from the file.
    assert settings.store.synchronous == "normal"
    assert settings.store.busy_timeout_ms == 250
    assert settings.ingest.flush_ms == 2.5
    assert settings.http.max_body_bytes == 4096
    assert [s.name for _, s in settings.sink_settings] == ["hook-a", "hook-b"]


def test_environment_alone_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIELDBRIDGE_INGEST__BATCH_SIZE", "42")
    monkeypatch.setenv("FIELDBRIDGE_LOG__FORMAT", "json")
    settings = load_settings()
    assert settings.ingest.batch_size == 42
    assert settings.log.format == "json"
    assert settings.store.url == "sqlite:///var/fieldbridge.db"


def test_bad_environment_value_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIELDBRIDGE_INGEST__BATCH_SIZE", "many")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "ingest.batch_size" in str(caught.value)
    assert "valid integer" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            '[ingest]\nbatch_size = "x"\n',
            ["ingest.batch_size", "valid integer"],
            id="wrong-type",
        ),
        pytest.param(
            "[ingest]\nbatch_size = 0\n",
            ["ingest.batch_size", "greater than or equal to 1"],
            id="below-range",
        ),
        pytest.param(
            "[ingest]\nbatch_size = 1000000\n",
            ["ingest.batch_size", "less than or equal to 100000"],
            id="above-range",
        ),
        pytest.param(
            "[store]\nretention_days = -1\n",
            ["store.retention_days", "greater than 0"],
            id="negative-retention",
        ),
        pytest.param(
            '[store]\nsynchronous = "sometimes"\n',
            ["store.synchronous", "'full'"],
            id="not-a-choice",
        ),
        pytest.param(
            '[http]\nlisten = "nowhere"\n',
            ["http.listen", "pattern"],
            id="listen-without-port",
        ),
        pytest.param(
            '[http]\nlisten = "127.0.0.1:8080"\nbogus = 1\n',
            ["http.bogus", "Extra inputs are not permitted"],
            id="unknown-key",
        ),
        pytest.param(
            "[nonsense]\na = 1\n",
            ["nonsense", "Extra inputs are not permitted"],
            id="unknown-section",
        ),
        pytest.param(
            '[[sinks.nope]]\nname = "x"\n',
            ["sinks.nope", "unknown type 'nope'", "webhook"],
            id="unknown-sink-type",
        ),
        pytest.param(
            '[[sinks.webhook]]\nname = "x"\n',
            ["sinks.webhook[0].url", "Field required"],
            id="webhook-without-url",
        ),
        pytest.param(
            '[[sinks.webhook]]\nname = "a"\nurl = "http://h/"\n'
            '[[sinks.webhook]]\nname = "b"\nurl = "not a url"\n',
            ["sinks.webhook[1].url", "valid URL"],
            id="webhook-bad-url",
        ),
        pytest.param(
            '[[sinks.webhook]]\nname = "a"\nurl = "http://h/"\n[sinks.webhook.route]\nbogus = 1\n',
            ["sinks.webhook[0].route.bogus", "Extra inputs are not permitted"],
            id="unknown-route-key",
        ),
        pytest.param(
            '[[sinks.webhook]]\nname = "same"\nurl = "http://h/1"\n'
            '[[sinks.webhook]]\nname = "same"\nurl = "http://h/2"\n',
            ["sinks", "'same'", "used twice"],
            id="duplicate-sink-names",
        ),
        pytest.param(
            "[store]\nbusy_timeout_ms = 20000\ncommit_timeout_s = 10\n",
            ["store.commit_timeout_s (10 s) must be longer than store.busy_timeout_ms"],
            id="commit-deadline-within-busy-timeout",
        ),
        pytest.param(
            '[store\nurl = "sqlite:///x.db"\n',
            ["not valid TOML", "line 1"],
            id="bad-toml-syntax",
        ),
    ],
)
def test_invalid_file_names_key_and_reason(tmp_path: Path, text: str, expected: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert str(path) in message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, '[ingest]\nbatch_size = "x"\nflush_ms = -1\n[http]\nbogus = true\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    for key in ("ingest.batch_size", "ingest.flush_ms", "http.bogus"):
        assert key in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path / "absent.toml")
    assert "absent.toml" in str(caught.value)
    assert "no such settings file" in str(caught.value)


def test_missing_file_named_by_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "gone.toml"))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "gone.toml" in str(caught.value)
    assert CONFIG_ENV in str(caught.value)


def test_public_dict_masks_secrets(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[store]\nurl = "postgresql://fb:s3cret-pw@db.example:5432/fb"\n'
        '[http]\ntokens = ["tok-one", "tok-two"]\n'
        '[[sinks.webhook]]\nname = "hook"\nurl = "http://127.0.0.1:9000/h"\n'
        'headers = { Authorization = "Bearer hook-secret", "X-Tenant" = "north" }\n',
    )
    settings = load_settings(path)
    public = settings.public_dict()
    assert public["store"]["url"] == f"postgresql://fb:{MASK}@db.example:5432/fb"
    assert public["http"]["tokens"] == [MASK, MASK]
    hook = public["sinks"]["webhook"][0]
    assert hook["headers"] == {"Authorization": MASK, "X-Tenant": MASK}
    assert hook["url"] == "http://127.0.0.1:9000/h"
    assert hook["route"] == {"sources": [], "kinds": [], "flag": None}
    text = json.dumps(public)
    for secret in ("s3cret-pw", "tok-one", "tok-two", "hook-secret"):
        assert secret not in text
    # The settings themselves keep the real values.
    assert settings.http.tokens == ["tok-one", "tok-two"]
    assert settings.store.url.endswith("fb:s3cret-pw@db.example:5432/fb")


def test_public_dict_has_every_section() -> None:
    public = load_settings().public_dict()
    assert set(public) == set(Settings.model_fields)
    assert public["store"]["url"] == "sqlite:///var/fieldbridge.db"  # no password: unchanged
    assert [s["name"] for s in public["sinks"]["mqtt"]] == ["local-mqtt"]
    assert [s["name"] for s in public["sources"]["mqtt"]] == ["mqtt", "smartcitizen", "trapnet"]
    json.dumps(public)  # JSON-ready


def http_sources(settings: Settings) -> list[HttpSourceSettings]:
    found = [s for t, s in settings.source_settings if t == "http"]
    assert all(isinstance(s, HttpSourceSettings) for s in found)
    return cast(list[HttpSourceSettings], found)


def test_http_short_form_is_one_http_source(tmp_path: Path) -> None:
    """[http]'s ingest, source_name and max_body_bytes keep working: they stand for one
    [[sources.http]] on POST /api/v1/ingest."""
    short = load_settings(
        write(tmp_path, '[http]\nsource_name = "farm-http"\nmax_body_bytes = 4096\n')
    )
    assert http_sources(short) == [
        HttpSourceSettings(name="farm-http", path="/api/v1/ingest", max_body_bytes=4096)
    ]
    plain = load_settings(write(tmp_path, '[store]\nurl = "sqlite:///x.db"\n'))
    assert http_sources(plain) == [HttpSourceSettings(name="http")]
    off = load_settings(write(tmp_path, "[http]\ningest = false\n"))
    assert http_sources(off) == []
    server_off = load_settings(write(tmp_path, "[http]\nenabled = false\n"))
    assert http_sources(server_off) == []


def test_http_sources_as_registered_entries(tmp_path: Path) -> None:
    text = (
        '[[sources.http]]\nname = "partners"\npath = "/api/v1/partners"\n'
        'max_body_bytes = 2048\n[[sources.http]]\nname = "http"\n'
    )
    settings = load_settings(write(tmp_path, text))
    assert http_sources(settings) == [
        HttpSourceSettings(name="partners", path="/api/v1/partners", max_body_bytes=2048),
        HttpSourceSettings(name="http", path="/api/v1/ingest", max_body_bytes=1_048_576),
    ]
    assert settings.public_dict()["sources"]["http"][0] == {
        "name": "partners",
        "path": "/api/v1/partners",
        "max_body_bytes": 2048,
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            '[http]\nsource_name = "a"\ningest = true\n[[sources.http]]\nname = "b"\n',
            [
                "http.source_name: the short form of one [[sources.http]]",
                "set `name` in [[sources.http]] instead",
                "http.ingest: the short form",
            ],
            id="both-forms",
        ),
        pytest.param(
            '[http]\nenabled = false\n[[sources.http]]\nname = "b"\n',
            ["sources.http.b: served by the HTTP server, which is off (http.enabled = false)"],
            id="server-off",
        ),
        pytest.param(
            '[[sources.http]]\nname = "a"\n[[sources.http]]\nname = "b"\n',
            ["sources.http.b: path /api/v1/ingest is served by sources.http.a already"],
            id="same-path",
        ),
        pytest.param(
            '[[sources.http]]\nname = "a"\npath = "/healthz"\n',
            ["sources.http[0].path", "one of the HTTP server's own endpoints"],
            id="server-path",
        ),
        pytest.param(
            '[[sources.http]]\nname = "a"\npath = "ingest"\n',
            ["sources.http[0].path", "pattern"],
            id="relative-path",
        ),
        pytest.param(
            '[http]\nsource_name = "has space"\n',
            ["http.source_name", "pattern"],
            id="short-form-bad-name",
        ),
        pytest.param(
            '[http]\nsource_name = "mqtt"\n[[sources.mqtt]]\nname = "mqtt"\ntopics = ["a"]\n',
            ["sources: name 'mqtt' is used twice"],
            id="short-form-name-taken",
        ),
    ],
)
def test_bad_http_sources_are_named(tmp_path: Path, text: str, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text))
    for part in expected:
        assert part in str(caught.value), f"{part!r} not in {caught.value}"
