"""Registry attributes (hardware, software, uptime, battery, RSSI, location) from named values."""

from __future__ import annotations

from collections.abc import Mapping

from fieldbridge.codecs.numbers import finite_number

MAX_TEXT = 256


def registry_attributes(values: Mapping[str, object], battery_key: str) -> dict[str, object]:
    """The attributes the original Monitor kept per node, from a message's named values.

    Keys as the devices sent them: Version, Type/HWType, Uptime (minutes), Uptime(m),
    Uptime(s), RSSI, latitude/Latitude, longitude/Longitude, location, Project, TrapID and the
    battery key (VBat unless codec_options.battery_key says otherwise).
    """
    out: dict[str, object] = {}
    for key, name in (("Version", "software"), ("Type", "hardware"), ("HWType", "hardware")):
        text = _text(values.get(key))
        if text is not None:
            out[name] = text
    for key, scale in (("Uptime", 1.0), ("Uptime(m)", 1.0), ("Uptime(s)", 1 / 60)):
        number = finite_number(values.get(key))
        if number is not None:
            out["uptime_min"] = number * scale
    for key, name in (("RSSI", "rssi"), (battery_key, "battery")):
        number = finite_number(values.get(key))
        if number is not None:
            out[name] = number
    for keys, name in (
        (("latitude", "Latitude"), "latitude"),
        (("longitude", "Longitude"), "longitude"),
    ):
        for key in keys:
            number = finite_number(values.get(key))
            if number is not None:
                out[name] = number
    for key, name in (("location", "place"), ("Location", "place"), ("Project", "project")):
        text = _text(values.get(key))
        if text is not None:
            out[name] = text
    trap = values.get("TrapID")
    if trap is not None and type(trap) in (str, int):
        out["trap_id"] = str(trap)[:MAX_TEXT]
    return out


def _text(value: object) -> str | None:
    if type(value) is not str or not value.strip():
        return None
    return value[:MAX_TEXT].replace("\x00", "")
