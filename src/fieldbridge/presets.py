"""Settings that stand in for a program fieldbridge replaces, made from that program's
environment variables (`fieldbridge run --preset NAME`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fieldbridge.errors import ConfigError

TRUE = ("1", "true", "yes", "on")


def mqtt_handler(env: Mapping[str, str]) -> dict[str, Any]:
    """The MQTT-Handler (seed 002, integrations.md §7) on an edge device: its Redis stream
    source, its values publisher and its remote control, from its own variables."""
    uuid = env.get("BALENA_DEVICE_UUID", "").strip()
    if not uuid:
        raise ConfigError(
            "preset mqtt-handler: BALENA_DEVICE_UUID is not set; it is the device identity "
            "(balena sets it on the device; elsewhere set it by hand)"
        )
    host = env.get("MQTT_HOST", "").strip()
    if not host:
        raise ConfigError("preset mqtt-handler: MQTT_HOST is not set (the broker's host name)")
    identity = {
        "device_uuid": uuid,
        "device_type": env.get("BALENA_DEVICE_TYPE", ""),
        "app_id": env.get("BALENA_APP_ID", ""),
        "app_name": env.get("BALENA_APP_NAME", ""),
    }
    redis_url = (
        f"redis://{env.get('REDIS_HOST', 'localhost')}:{_int(env, 'REDIS_PORT', 6379)}"
        f"/{_int(env, 'REDIS_DB', 0)}"
    )
    insecure = env.get("MQTT_TLS_INSECURE", "").strip().lower() in TRUE
    ca, cert, key = (env.get(f"MQTT_TLS_{n}") or None for n in ("CA_CERTS", "CERTFILE", "KEYFILE"))
    tls = bool(ca or cert or insecure)
    port = _int(env, "MQTT_PORT", 8883 if tls else 1883)
    broker: dict[str, Any] = {
        "url": f"{'mqtts' if tls else 'mqtt'}://{host}:{port}",
        "keepalive": _int(env, "MQTT_KEEPALIVE_SECONDS", 60),
        "tls_insecure": insecure,
    }
    for name, value in (("ca_file", ca), ("cert_file", cert), ("key_file", key)):
        if value:
            broker[name] = value
    if env.get("MQTT_USERNAME"):
        broker["username"] = env["MQTT_USERNAME"]
        broker["password"] = env.get("MQTT_PASSWORD", "")
    topics = {
        f"topic_{name}": env[f"MQTT_TOPIC_{name.upper()}"]
        for name in ("broadcast", "request", "response", "values")
        if env.get(f"MQTT_TOPIC_{name.upper()}")
    }
    sink: dict[str, Any] = {
        "name": "mqtt-handler",
        "preset": "mqtt-handler",
        "broker": {**broker, "client_id": f"fieldbridge-{uuid}-values"},
        "identity": identity,
        "redis": {"url": redis_url},
        "qos": 1,
        # Each journal message is an XREAD batch (up to 500 entries): 20 of them per send.
        "batch_size": 20,
    }
    if "topic_values" in topics:
        sink["topic"] = topics["topic_values"]
    if env.get("INTERVAL_SECONDS"):
        sink["interval"] = _float(env, "INTERVAL_SECONDS")
    return {
        "sources": {
            "redis_stream": [
                {
                    "name": "measurement",
                    "url": redis_url,
                    "stream": "measurement:values",
                    "device": uuid,
                    # Take over where the MQTT-Handler stopped: nothing it sent is sent again.
                    "start_after_key": "mqtt_sender:last_id",
                    # A forwarder: a journal message per XREAD batch, no reading rows.
                    "journal": "batch",
                }
            ]
        },
        "sinks": {"mqtt": [sink]},
        "control": {
            "enabled": True,
            "broker": {**broker, "client_id": f"fieldbridge-{uuid}-control"},
            "identity": identity,
            "redis": {"url": redis_url, "stream": "measurement:values"},
            **topics,
        },
    }


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r}: a whole number is needed") from None


def _float(env: Mapping[str, str], name: str) -> float:
    text = env.get(name, "").strip()
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r}: a number of seconds is needed") from None


PRESETS: dict[str, Callable[[Mapping[str, str]], dict[str, Any]]] = {
    "mqtt-handler": mqtt_handler,
}


def preset_settings(name: str, env: Mapping[str, str]) -> dict[str, Any]:
    """The settings preset `name` stands for; ConfigError for an unknown name."""
    build = PRESETS.get(name)
    if build is None:
        raise ConfigError(f"--preset {name}: unknown preset (known: {', '.join(sorted(PRESETS))})")
    return build(env)
