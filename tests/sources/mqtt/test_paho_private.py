"""The start-up check of the private paho names the MQTT client relies on: passes on the installed
paho, and names the version and the name when paho's class lost or changed one."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fieldbridge.app import Service
from fieldbridge.config import load_settings
from fieldbridge.errors import ConfigError, IncompatibleDependency
from fieldbridge.sources.mqtt.client import FastClient
from fieldbridge.sources.mqtt.paho_private import (
    ATTRIBUTES,
    METHODS,
    OWN_NAMES,
    TESTED,
    incompatibilities,
    paho_version,
)
from tests.support.processes import free_port

FIELDBRIDGE = str(Path(sys.executable).with_name("fieldbridge"))
CLI_TIMEOUT = 60.0  # seconds; only guards against a hang
# The names keepalive depends on: if one of them changes, PINGREQ/PINGRESP handling breaks
# silently, so each must be in the checked list.
KEEPALIVE = {"_check_keepalive", "loop_misc", "_handle_pingresp", "_last_bytes_received", "_ping_t"}


def build() -> FastClient:
    return FastClient(CallbackAPIVersion.VERSION2, client_id="check", manual_ack=True)


def assert_names(error: BaseException, *names: str) -> None:
    text = str(error)
    assert f"paho-mqtt {paho_version()} is installed" in text
    assert TESTED in text and "pyproject.toml" in text
    for name in names:
        assert name in text, (name, text)


def test_installed_paho_has_every_name() -> None:
    assert incompatibilities(paho.Client(CallbackAPIVersion.VERSION2)) == []
    client = build()  # the check runs in the constructor
    assert client.on_publish_packet is None


def test_keepalive_names_are_checked() -> None:
    checked = {m.name for m in METHODS} | {a.name for a in ATTRIBUTES}
    assert checked >= KEEPALIVE


def test_the_list_covers_every_paho_name_fastclient_uses() -> None:
    # Someone adding a hook to client.py must add it to paho_private.py: every private paho
    # name that FastClient's code uses is in the checked list, every name it adds is in OWN_NAMES.
    stock = paho.Client(CallbackAPIVersion.VERSION2)
    codes = []
    for value in vars(FastClient).values():
        function = value.fget if isinstance(value, property) else value
        if hasattr(function, "__code__"):
            codes.append(function.__code__)
    used = {name for code in codes for name in code.co_names if name.startswith("_")}
    paho_names = {name for name in used if hasattr(paho.Client, name) or name in vars(stock)}
    checked = {m.name for m in METHODS} | {a.name for a in ATTRIBUTES}
    assert paho_names - {"__init__"} <= checked
    added = {n for n in vars(FastClient) if not n.startswith("__")} - checked
    added |= set(vars(build())) - set(vars(stock))
    assert added <= set(OWN_NAMES)


@pytest.mark.parametrize(
    "name",
    [m.name for m in METHODS],
)
def test_a_missing_method_is_named(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    original = paho.Client.__dict__[name]
    monkeypatch.delattr(paho.Client, name)
    monkeypatch.setattr(paho.Client, f"{name}_v3", original, raising=False)  # "renamed"
    with pytest.raises(IncompatibleDependency) as caught:
        build()
    # paho's __del__ of the half-built client calls _sock_close: put paho back before it runs.
    monkeypatch.undo()
    assert_names(caught.value, f"paho.Client.{name} is missing")
    assert isinstance(caught.value, ConfigError)  # the CLI exits 2 with the message


def test_keepalive_that_no_longer_reads_our_timestamp_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def _check_keepalive(self: Any) -> None:  # a paho that tracks received bytes elsewhere
        if self._ping_t and paho.time_func() - self._last_msg_in > self._keepalive:
            self._send_pingreq()

    monkeypatch.setattr(paho.Client, "_check_keepalive", _check_keepalive)
    with pytest.raises(IncompatibleDependency) as caught:
        build()
    assert_names(caught.value, "_check_keepalive no longer uses _last_bytes_received")


def test_a_changed_signature_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    def _packet_queue(self: Any, packet: bytes, command: int, mid: int, qos: int) -> Any:
        return self._out_packet.append(packet) or self._call_socket_register_write()

    monkeypatch.setattr(paho.Client, "_packet_queue", _packet_queue)
    with pytest.raises(IncompatibleDependency) as caught:
        build()
    assert_names(caught.value, "_packet_queue takes (packet, command, mid, qos)")


def test_a_missing_instance_attribute_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    original = paho.Client.__init__

    def __init__(self: paho.Client, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self._last_data_in = self._last_bytes_received  # type: ignore[attr-defined]
        del self._last_bytes_received

    monkeypatch.setattr(paho.Client, "__init__", __init__)
    with pytest.raises(IncompatibleDependency) as caught:
        build()
    assert_names(caught.value, "paho.Client()._last_bytes_received is missing", "keepalive")


def test_a_paho_name_we_would_overwrite_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paho.Client, "_rbuf", b"", raising=False)
    with pytest.raises(IncompatibleDependency) as caught:
        build()
    assert_names(caught.value, "paho.Client now has _rbuf of its own")


def test_every_problem_is_listed_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(paho.Client, "_sock_recv")
    monkeypatch.delattr(paho.Client, "_handle_pingresp")
    monkeypatch.delattr(paho.Client, "_create_socket")
    with pytest.raises(IncompatibleDependency) as caught:
        build()
    assert_names(caught.value, "_sock_recv", "_handle_pingresp", "_create_socket")


def settings_file(tmp_path: Path) -> Path:
    path = tmp_path / "fieldbridge.toml"
    path.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path / "store.db"}"\n\n[http]\nenabled = false\n\n'
        f'[[sources.mqtt]]\nname = "mqtt"\nurl = "mqtt://127.0.0.1:{free_port()}"\n'
        'topics = ["t/#"]\ncodec = "json"\n'
    )
    return path


async def test_the_service_does_not_start(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = load_settings(settings_file(tmp_path))
    monkeypatch.delattr(paho.Client, "_check_keepalive")
    with pytest.raises(IncompatibleDependency) as caught:
        await asyncio.wait_for(Service(settings).run(asyncio.Event()), CLI_TIMEOUT)
    assert_names(caught.value, "_check_keepalive")


def test_fieldbridge_run_exits_naming_the_version(tmp_path: Path) -> None:
    # A paho whose keepalive method was renamed, loaded in a real `fieldbridge run` process.
    (tmp_path / "sitecustomize.py").write_text(
        "import paho.mqtt.client as c\n"
        "c.Client._keepalive_check = c.Client._check_keepalive\n"
        "del c.Client._check_keepalive\n"
    )
    done = subprocess.run(
        [FIELDBRIDGE, "--config", str(settings_file(tmp_path)), "run"],
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    said = " ".join(done.stderr.split())  # the CLI wraps long errors to the terminal width
    assert f"paho-mqtt {paho_version()} is installed" in said
    assert "paho.Client._check_keepalive is missing" in said
    assert TESTED in said
