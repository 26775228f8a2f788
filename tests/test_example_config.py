"""fieldbridge.example.toml stays in step with the settings models: every setting, no stranger."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, create_model

from fieldbridge.config import IngestSettings, Settings, load_settings
from fieldbridge.plugin import SINK_TYPES, SOURCE_TYPES, load_builtins
from fieldbridge.sinks.webhook import WebhookSettings
from tests.support import paths
from tests.support.processes import child_env

EXAMPLE = paths.ROOT / "fieldbridge.example.toml"
FIELDBRIDGE = str(Path(sys.executable).with_name("fieldbridge"))
PLUGIN_SECTIONS = ("sources", "sinks")
# Sections of named entries, whose example shows an entry rather than the (empty) default.
NAMED_ENTRIES = (*PLUGIN_SECTIONS, "dunedb")
HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
COMMENTED_KEY = re.compile(r"^\s*#+\s*([A-Za-z_][A-Za-z0-9_]*)\s*=")

Commented = dict[str, set[str]]  # table path ("log", "sinks.webhook.route") -> commented keys


def example() -> dict[str, Any]:
    with EXAMPLE.open("rb") as handle:
        return tomllib.load(handle)


def commented_keys(text: str) -> Commented:
    """Keys written as commented-out assignments (`# file = "..."`), per table.

    TOML has no null, so a setting whose default is None can only be shown commented out.
    """
    found: Commented = {}
    table = ""
    for line in text.splitlines():
        header = HEADER.match(line)
        if header:
            table = header.group(1)
            continue
        key = COMMENTED_KEY.match(line)
        if key:
            found.setdefault(table, set()).add(key.group(1))
    return found


def sub_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def missing_fields(
    model: type[BaseModel],
    data: dict[str, Any],
    path: str,
    commented: Commented,
    skip: tuple[str, ...] = (),
) -> list[str]:
    """Dotted paths of the fields of `model` (recursively) that `data` does not show."""
    missing: list[str] = []
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        where = f"{path}.{name}" if path else name
        nested = sub_model(field.annotation)
        if name in data:
            if nested is not None and isinstance(data[name], dict):
                missing += missing_fields(nested, data[name], where, commented)
            continue
        optional = not field.is_required() and field.get_default(call_default_factory=True) is None
        if optional and name in commented.get(path, set()):
            continue  # a None default, shown as a commented-out line
        missing.append(where)
    return missing


def unknown_keys(model: type[BaseModel], data: dict[str, Any], path: str) -> list[str]:
    """Dotted paths of keys in `data` that `model` (recursively) does not have."""
    unknown: list[str] = []
    for key, value in data.items():
        where = f"{path}.{key}" if path else key
        field = model.model_fields.get(key)
        if field is None:
            unknown.append(where)
            continue
        nested = sub_model(field.annotation)
        if nested is not None and isinstance(value, dict):
            unknown += unknown_keys(nested, value, where)
    return unknown


def plugin_registries() -> dict[str, dict[str, Any]]:
    load_builtins()
    return {"sources": SOURCE_TYPES, "sinks": SINK_TYPES}


def test_example_is_valid_settings() -> None:
    settings = load_settings(EXAMPLE)
    assert [(t, s.name) for t, s in settings.sink_settings] == [
        ("webhook", "example-webhook"),
        ("thingworx", "example-thingworx"),
        ("thingsboard", "example-thingsboard"),
        ("trapnz", "example-trapnz"),
        ("dunedb", "example-dunedb"),
        ("influxdb", "example-influxdb"),
        ("mqtt", "example-mqtt"),
    ]
    hook = settings.sink_settings[0][1]
    assert isinstance(hook, WebhookSettings)
    assert hook.headers["Authorization"].get_secret_value() == "Bearer change-me"
    assert str(hook.url).startswith("http://127.0.0.1:")


def test_example_lists_every_core_setting() -> None:
    data = example()
    commented = commented_keys(EXAMPLE.read_text())
    missing = missing_fields(Settings, data, "", commented, skip=PLUGIN_SECTIONS)
    assert not missing, (
        f"settings missing from {EXAMPLE.name} (add each with a comment and its default): "
        + ", ".join(missing)
    )


def test_example_core_values_are_the_defaults() -> None:
    """The core sections show the defaults, so the file documents what runs without one."""
    data = example()
    for name, field in Settings.model_fields.items():
        model = sub_model(field.annotation)
        if model is None or name in NAMED_ENTRIES:
            continue
        defaults = model().model_dump(mode="json")
        for key, value in data.get(name, {}).items():
            default = defaults[key]
            if isinstance(value, dict) and isinstance(default, dict):
                # A sub-table: TOML has no null, so its None defaults are shown commented out.
                default = {k: v for k, v in default.items() if v is not None or k in value}
            assert value == default, f"{name}.{key}: example says {value!r}, default is " + (
                repr(default)
            )


def test_example_has_every_plugin_setting() -> None:
    data = example()
    commented = commented_keys(EXAMPLE.read_text())
    missing: list[str] = []
    for section, registry in plugin_registries().items():
        for type_name, plugin in sorted(registry.items()):
            entries = data.get(section, {}).get(type_name, [])
            path = f"{section}.{type_name}"
            if not entries:
                missing.append(f"[[{path}]] (no example entry)")
                continue
            # A setting counts when at least one entry of its type shows it.
            per_entry = [
                set(missing_fields(plugin.settings, entry, path, commented)) for entry in entries
            ]
            missing += sorted(set.intersection(*per_entry))
    assert not missing, f"plugin settings missing from {EXAMPLE.name}: " + ", ".join(missing)


def test_example_has_no_unknown_key() -> None:
    data = example()
    unknown = unknown_keys(
        Settings, {k: v for k, v in data.items() if k not in PLUGIN_SECTIONS}, ""
    )
    registries = plugin_registries()
    for section in PLUGIN_SECTIONS:
        for type_name, entries in data.get(section, {}).items():
            plugin = registries[section].get(type_name)
            if plugin is None:
                unknown.append(f"{section}.{type_name}")
                continue
            for index, entry in enumerate(entries):
                unknown += unknown_keys(plugin.settings, entry, f"{section}.{type_name}[{index}]")
    assert not unknown, f"keys in {EXAMPLE.name} that no setting has: " + ", ".join(unknown)


def test_commented_out_keys_are_real_settings() -> None:
    """A commented-out line must still name a real setting of its table."""
    registries = plugin_registries()
    for table, keys in commented_keys(EXAMPLE.read_text()).items():
        if not table:
            continue  # the header comment's FIELDBRIDGE_... examples
        parts = table.split(".")
        model: type[BaseModel] | None
        if parts[0] in PLUGIN_SECTIONS:
            model = registries[parts[0]][parts[1]].settings
            parts = parts[2:]
        else:
            model = Settings
        for part in parts:
            assert model is not None
            model = sub_model(model.model_fields[part].annotation)
        assert model is not None, table
        assert keys <= set(model.model_fields), (
            f"[{table}]: {sorted(keys - set(model.model_fields))}"
        )


def test_a_setting_without_example_line_is_named() -> None:
    """The check above really catches a new setting: a model with one more field fails it."""
    grown = create_model("GrownIngest", __base__=IngestSettings, spill_dir=(str, "var/spill"))
    data = example()
    assert missing_fields(IngestSettings, data["ingest"], "ingest", {}) == []
    assert missing_fields(grown, data["ingest"], "ingest", {}) == ["ingest.spill_dir"]
    optional = create_model("GrownIngest2", __base__=IngestSettings, spill_dir=(str | None, None))
    assert missing_fields(optional, data["ingest"], "ingest", {}) == ["ingest.spill_dir"]
    assert missing_fields(optional, data["ingest"], "ingest", {"ingest": {"spill_dir"}}) == []


def test_cli_config_check_accepts_example() -> None:
    done = subprocess.run(
        [FIELDBRIDGE, "--config", str(EXAMPLE), "config", "check"],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "settings are valid" in done.stdout
    assert "7 sinks" in done.stdout
