"""Where simulated traffic goes: the sources of the settings fieldbridge runs with, or the
addresses given on the command line; and what to add when a kind has no source to go to."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any

from fieldbridge.config import Settings
from fieldbridge.sources.coap.settings import EfentoCoapSettings, parse_listen
from fieldbridge.sources.mqtt.client import tls_context
from fieldbridge.sources.mqtt.settings import MqttSettings
from fieldbridge.topics import matches

TRAP_TOPIC = "EnvironmentalServices/traps"
DEFAULT_PREFIX = "AKLC"

EFENTO_SOURCE = """\
[[sources.efento]]
name = "efento"
listen = "127.0.0.1:5683\""""
TRAPNET_SOURCE = """\
[[sources.mqtt]]
name = "aklc"
url = "mqtt://127.0.0.1:1883"
topics = ["AKLC/#", "EnvironmentalServices/#"]
codec = "trapnet"
embedded_broker = "auto\""""


@dataclass(frozen=True, slots=True)
class CoapTarget:
    host: str
    port: int
    prefix: str = ""
    token: str | None = None  # a cloud token the source accepts, when it requires one
    token_option: int | None = None  # where the sensors put it; None: in the payload

    @property
    def where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"coap://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class MqttTarget:
    host: str
    port: int
    tls: ssl.SSLContext | None = None
    username: str | None = None
    password: str | None = None
    prefix: str = DEFAULT_PREFIX  # trapnet: the first topic level of the network's topics

    @property
    def where(self) -> str:
        return f"{'mqtts' if self.tls is not None else 'mqtt'}://{self.host}:{self.port}"


@dataclass
class Targets:
    """Per kind: where to send, or (in `missing`) why not and what to add."""

    http: str | None = None  # base URL of fieldbridge's HTTP server, to check it runs
    efento: CoapTarget | None = None
    smartcitizen: MqttTarget | None = None
    trapnet: MqttTarget | None = None
    missing: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # sent anyway, but worth knowing


def resolve(
    settings: Settings,
    *,
    http: str | None = None,
    mqtt: str | None = None,
    coap: str | None = None,
) -> Targets:
    """The targets of `settings`, each replaced by the address given for its protocol.

    A kind without a source of its own in the settings and without an address given is
    `missing`, with the settings to add: the broker would take its messages, but no source
    would store them.
    """
    targets = Targets(http=http or _http_url(settings))
    efento_sources = [s for t, s in settings.source_settings if isinstance(s, EfentoCoapSettings)]
    mqtt_sources = [s for t, s in settings.source_settings if isinstance(s, MqttSettings)]

    efento = efento_sources[0] if efento_sources else None
    if coap is not None:
        host, port = _host_port(coap, "--coap", 5683)
        targets.efento = _coap_target(host, port, efento)
        if efento is None:
            targets.notes.append(
                f"efento: no [[sources.efento]] in the settings; sending to {coap} as given"
            )
    elif efento is not None:
        host, port = parse_listen(efento.listen)
        targets.efento = _coap_target(_reachable(host), port, efento)
    else:
        targets.missing["efento"] = _what_to_add(
            settings,
            "the settings have no Efento CoAP source, so nothing would take the sensors' frames",
            EFENTO_SOURCE,
            "--coap HOST:PORT of a running Efento source",
        )

    kits = _mqtt_source(mqtt_sources, "smartcitizen", ["device/sck/a1b2c3/readings"])
    if mqtt is not None:
        targets.smartcitizen = _mqtt_target(mqtt, kits)
    elif kits is not None:
        targets.smartcitizen = _mqtt_target(None, kits)
    else:
        targets.missing["smartcitizen"] = (
            'the settings have no MQTT source with codec "smartcitizen" on device/sck/+/...; '
            "fieldbridge without a settings file has one (`make run`); else add it as "
            "fieldbridge.example.toml shows, or give --mqtt HOST:PORT of the broker a running "
            "one reads"
        )
    if kits is not None and _codec_option(kits, "tokens") is not None:
        targets.notes.append(
            f"smartcitizen: sources.mqtt.{kits.name} accepts only the kit tokens in its "
            "codec_options.tokens; the simulated kits' tokens are refused unless listed there"
        )
    if kits is not None and _codec_option(kits, "registered_only"):
        targets.notes.append(
            f"smartcitizen: sources.mqtt.{kits.name} takes registered kits only; register the "
            "simulated kits first (`fieldbridge devices add TOKEN`)"
        )

    prefix = DEFAULT_PREFIX
    trap_sources = [s for s in mqtt_sources if s.codec == "trapnet"]
    if trap_sources:
        prefix = str(_codec_option(trap_sources[0], "prefix") or DEFAULT_PREFIX)
    network = _mqtt_source(
        mqtt_sources, "trapnet", [f"{prefix}/Network", f"{prefix}/Network/Trap100", TRAP_TOPIC]
    )
    if network is not None:
        prefix = str(_codec_option(network, "prefix") or DEFAULT_PREFIX)
    if mqtt is not None:
        targets.trapnet = _mqtt_target(mqtt, network, prefix)
        if network is None:
            targets.notes.append(
                'trapnet: no MQTT source with codec "trapnet" on AKLC/# and '
                f"EnvironmentalServices/# in the settings; publishing to {mqtt} as given"
            )
    elif network is not None:
        targets.trapnet = _mqtt_target(None, network, prefix)
    else:
        targets.missing["trapnet"] = _what_to_add(
            settings,
            'the settings have no MQTT source with codec "trapnet" on AKLC/# and '
            "EnvironmentalServices/#, so the broker would take the trap network's messages but "
            "nothing would store them",
            TRAPNET_SOURCE,
            "--mqtt HOST:PORT of the broker a running one reads",
        )
    return targets


def _what_to_add(settings: Settings, problem: str, entry: str, instead: str) -> str:
    """Why a kind has nowhere to go, the settings entry to add (its second paragraph), and
    where: the settings file, or (the built-in settings, narrowed by FIELDBRIDGE_SOURCES) one."""
    path = type(settings).toml_path
    if path is None:
        return (
            f"{problem} (FIELDBRIDGE_SOURCES left it out of the built-in settings). Such a "
            f"source is\n\n{entry}\n\nin a settings file given with --config; or give {instead}"
        )
    return f"{problem}. Add to {path}\n\n{entry}\n\nand restart fieldbridge; or give {instead}"


def _http_url(settings: Settings) -> str | None:
    if not settings.http.enabled:
        return None
    host, _, port = settings.http.listen.rpartition(":")
    host = _reachable(host.strip("[]") or "127.0.0.1")
    # HTTPS when the server has a certificate (http.tls_cert, with the console's security).
    scheme = "https" if getattr(settings.http, "tls_cert", None) else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _reachable(host: str) -> str:
    """Where to reach a server listening on `host` (a wildcard means this machine)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _host_port(text: str, option: str, default_port: int) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(default_port)
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{option} {text!r}: give HOST:PORT, e.g. 127.0.0.1:{default_port}")
    return host, int(port)


def _coap_target(host: str, port: int, source: EfentoCoapSettings | None) -> CoapTarget:
    if source is None:
        return CoapTarget(host, port)
    token = None
    if source.tokens_required and source.tokens:
        token = source.tokens[0].get_secret_value()
    return CoapTarget(
        host,
        port,
        prefix=source.path_prefix[0],
        token=token,
        token_option=source.token_option,
    )


def _mqtt_source(sources: list[MqttSettings], codec: str, topics: list[str]) -> MqttSettings | None:
    """The first source with `codec` subscribed to every topic in `topics`."""
    for source in sources:
        filters = [_plain_filter(f) for f in source.topics]
        if source.codec == codec and all(any(matches(f, t) for f in filters) for t in topics):
            return source
    return None


def _plain_filter(topic_filter: str) -> str:
    if topic_filter.startswith("$share/"):
        return topic_filter.split("/", 2)[2]
    return topic_filter.removeprefix("$queue/")


def _codec_option(source: MqttSettings, key: str) -> Any:
    return source.codec_options.get(key)


def _mqtt_target(
    given: str | None, source: MqttSettings | None, prefix: str = DEFAULT_PREFIX
) -> MqttTarget:
    if given is not None:
        host, port = _host_port(given, "--mqtt", 1883)
        return MqttTarget(host, port, prefix=prefix)
    assert source is not None
    endpoint = source.endpoint
    password = source.password.get_secret_value() if source.password is not None else None
    return MqttTarget(
        endpoint.host,
        endpoint.port,
        tls=tls_context(source),
        username=source.username,
        password=password,
        prefix=prefix,
    )
