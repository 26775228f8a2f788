"""[[sources.mqtt]] settings: checked at start, errors that name the setting, secrets masked,
and the default run without a settings file."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from fieldbridge.config import load_settings
from fieldbridge.errors import ConfigError
from fieldbridge.sources.mqtt import MqttSettings
from fieldbridge.sources.mqtt.broker import broker_config
from fieldbridge.sources.mqtt.client import tls_context
from fieldbridge.sources.mqtt.settings import Endpoint, parse_url


@pytest.fixture(autouse=True)
def in_tmp_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no fieldbridge.toml of the checkout is found


def load(tmp_path: Path, entry: str) -> MqttSettings:
    path = tmp_path / "fieldbridge.toml"
    path.write_text(f"[[sources.mqtt]]\n{entry}\n")
    [settings] = [s for t, s in load_settings(path).source_settings if t == "mqtt"]
    assert isinstance(settings, MqttSettings)
    return settings


def refused(tmp_path: Path, entry: str) -> str:
    path = tmp_path / "fieldbridge.toml"
    path.write_text(f"[[sources.mqtt]]\n{entry}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    return str(caught.value)


BASE = 'name = "site"\ntopics = ["a/#"]\ncodec = "http-json"'


def test_defaults(tmp_path: Path) -> None:
    settings = load(tmp_path, BASE)
    assert settings.endpoint == Endpoint("127.0.0.1", 1883, tls=False)
    assert settings.client_id == "fieldbridge-site"  # fixed: the broker keeps the session
    assert settings.status_topic == "fieldbridge/site/status"
    assert (settings.qos, settings.clean_session, settings.protocol) == (1, False, "3.1.1")
    assert settings.embedded_broker == "off"  # only the default run starts a broker


def test_placeholders(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        BASE + '\nclient_id = "fb-{hostname}-{name}"\nstatus_topic = "plant/{name}/state"',
    )
    assert settings.client_id == f"fb-{socket.gethostname()}-site"
    assert settings.status_topic == "plant/site/state"
    assert "only the placeholders {name} and {hostname}" in refused(
        tmp_path, BASE + '\nclient_id = "fb-{pid}"'
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://broker.example", Endpoint("broker.example", 1883, tls=False)),
        ("mqtts://broker.example", Endpoint("broker.example", 8883, tls=True)),
        ("mqtts://10.0.0.5:9883", Endpoint("10.0.0.5", 9883, tls=True)),
        ("mqtt://[::1]:1884", Endpoint("::1", 1884, tls=False)),
    ],
)
def test_urls(url: str, expected: Endpoint) -> None:
    assert parse_url(url) == expected


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ('url = "http://broker:1883"', "the scheme must be mqtt:// or mqtts://"),
        ('url = "mqtt://u:p@broker"', "put credentials in username and password"),
        ('url = "mqtt://broker:99999"', "the port must be a number"),
        ('url = "mqtt://broker/topic"', "no path or query"),
        ('topics = ["a/#/b"]', "'#' must be a whole level and the last one"),
        ('topics = ["a/b+"]', "'+' must be a whole level"),
        ('topics = ["$share/g"]', "a shared subscription is $share/<group>/<filter>"),
        ('topics = ["$queue/"]', "$queue/ needs a filter"),
        ('topics = ["a", "a"]', "listed twice"),
        ("topics = []", "sources.mqtt[0].topics"),
        ("qos = 3", "sources.mqtt[0].qos"),
        ('ca_file = "/nonexistent/ca.pem"\nurl = "mqtts://b"', "no such file: /nonexistent/ca.pem"),
        ("tls_insecure = true", "need TLS: use an mqtts:// url"),
        ('password = "x"', "password needs username"),
        ('status_topic = "a/+/status"', "status_topic must be a plain topic"),
        ('codec = "nope"', "sources.mqtt.site.codec: unknown codec 'nope'"),
        ("codec_options = { strict = true }", "options for codec 'http-json': takes no options"),
        ('protocol = "4"', "sources.mqtt[0].protocol"),
        ("surprise = 1", "sources.mqtt[0].surprise"),
    ],
)
def test_refusals_name_the_setting(tmp_path: Path, entry: str, expected: str) -> None:
    fields = dict(line.split(" = ", 1) for line in BASE.splitlines())
    for line in entry.splitlines():
        key, value = line.split(" = ", 1)
        fields[key] = value
    message = refused(tmp_path, "\n".join(f"{k} = {v}" for k, v in fields.items()))
    assert expected in message
    assert "sources.mqtt[0]" in message


def test_shared_and_queue_subscriptions_are_valid(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        'name = "site"\ncodec = "http-json"\ntopics = ["$share/fb/device/+/up", "$queue/x/#"]',
    )
    assert settings.topics == ["$share/fb/device/+/up", "$queue/x/#"]


def test_password_is_masked(tmp_path: Path) -> None:
    path = tmp_path / "fieldbridge.toml"
    path.write_text(f'[[sources.mqtt]]\n{BASE}\nusername = "fb"\npassword = "hunter2"\n')
    settings = load_settings(path)
    public = settings.public_dict()["sources"]["mqtt"][0]
    assert public["password"] == "**********"
    assert public["username"] == "fb"
    assert "hunter2" not in str(settings.public_dict())


def test_unreadable_client_certificate_names_the_setting(tmp_path: Path) -> None:
    garbage = tmp_path / "client.pem"
    garbage.write_text("not a certificate\n")
    settings = load(tmp_path, BASE + f'\nurl = "mqtts://b"\ncert_file = "{garbage}"')
    with pytest.raises(ConfigError, match=r"sources\.mqtt\.site\.cert_file/key_file"):
        tls_context(settings)


def test_tls_insecure_checks_nothing(tmp_path: Path) -> None:
    context = tls_context(load(tmp_path, BASE + '\nurl = "mqtts://b"\ntls_insecure = true'))
    assert context is not None
    assert not context.check_hostname
    assert tls_context(load(tmp_path, BASE)) is None  # mqtt://: no TLS


def test_default_run_without_a_settings_file() -> None:
    settings = load_settings()
    mqtt = {s.name: s for t, s in settings.source_settings if t == "mqtt"}
    assert set(mqtt) == {"mqtt", "smartcitizen", "trapnet"}
    for source in mqtt.values():
        assert isinstance(source, MqttSettings)
        assert source.url == "mqtt://127.0.0.1:1883"
        assert source.embedded_broker == "auto"
        assert source.qos == 1 and not source.clean_session
    assert mqtt["mqtt"].codec == "json" and mqtt["mqtt"].topics == ["sensors/+/data"]
    assert mqtt["smartcitizen"].codec == "smartcitizen"
    assert "device/sck/+/readings" in mqtt["smartcitizen"].topics
    assert mqtt["trapnet"].codec == "trapnet" and mqtt["trapnet"].monitor is not None


def test_environment_can_drop_the_default_run_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIELDBRIDGE_SOURCES", '{"mqtt": [], "efento": []}')
    # HTTP ingest stays: no [[sources.http]] given, so [http]'s short form runs one.
    assert [(t, s.name) for t, s in load_settings().source_settings] == [("http", "http")]


def test_a_settings_file_has_only_its_own_sources(tmp_path: Path) -> None:
    path = tmp_path / "fieldbridge.toml"
    path.write_text("[ingest]\nbatch_size = 7\n")
    # No default-run MQTT sources; only the HTTP source a file without [[sources.http]] runs.
    assert [(t, s.name) for t, s in load_settings(path).source_settings] == [("http", "http")]


def test_embedded_broker_configuration(tmp_path: Path) -> None:
    conf = broker_config("127.0.0.1", 1884, tmp_path)
    assert "listener 1884 127.0.0.1" in conf
    assert "persistence true" in conf
    assert f"persistence_location {tmp_path.resolve()}/" in conf
    # The defaults would drop messages beyond 1000 queued and throttle acks after commit.
    assert "max_queued_messages 1000000" in conf
    assert "max_inflight_messages 1000" in conf
