"""Rebuilds the Smart Citizen sensor catalogue (sensors.json) from the kit firmware's sensor table.

Usage:
    git clone https://github.com/fablabbcn/smartcitizen-kit-2x
    python scripts/smartcitizen_catalogue.py smartcitizen-kit-2x/lib/Sensors/Sensors.h \
        --commit "$(git -C smartcitizen-kit-2x rev-parse HEAD)"

Every `OneSensor { location, priority, type, "SHORT", "Title", id, enabled, everyN, "unit" }`
row of the table with a platform id (id 0 = read but never published) gives one entry: its
title and unit from the firmware. Quantity names already in sensors.json are kept, so a refresh
never renames what is stored; a new id is named after the firmware's short title, lowercased
(`SEN5X_PM_25` -> `sen5x_pm_2_5`). Ids the firmware no longer has (the SCK 1.x ids of the
platform's documentation) stay as they are.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = ROOT / "src/fieldbridge/codecs/smartcitizen/sensors.json"
ROW = re.compile(
    r"OneSensor\s*\{\s*\w+\s*,\s*\d+\s*,\s*\w+\s*,\s*\"(?P<short>[^\"]*)\"\s*,"
    r"\s*\"(?P<title>[^\"]*)\"\s*,\s*(?P<id>\d+)\s*,\s*\w+\s*,\s*\d+\s*"
    r"(?:,\s*\"(?P<unit>[^\"]*)\")?"
)
# Units as the firmware spells them in ASCII -> as fieldbridge shows them.
UNITS = {
    "C": "°C",
    "ug/m3": "µg/m³",
    "uS/cm": "µS/cm",
    "um": "µm",
    "uW/cm2": "µW/cm²",
    "lux": "lx",
    "Deg": "°",
    "Present": "",  # SD card: 1 present, 0 absent
}
# Particle sizes the short titles write without their point: PM_25 is PM 2.5.
SIZES = {"25": "2_5", "05": "0_5", "03": "0_3"}


def firmware_rows(header: str) -> list[tuple[int, str, str, str]]:
    """(id, short title, title, unit) of every published sensor, in table order."""
    text = re.sub(r"//[^\n]*", "", header)  # commented-out rows are not in the firmware
    rows = []
    for match in ROW.finditer(text):
        sid = int(match["id"])
        if sid:
            rows.append((sid, match["short"], match["title"], match["unit"] or ""))
    return rows


def quantity(short: str) -> str:
    parts = short.lower().split("_")
    if parts[-1] in SIZES and ("pm" in parts[:-1] or "pn" in parts[:-1]):
        parts[-1] = SIZES[parts[-1]]
    return "_".join(parts)


def rebuild(header: str, current: dict[str, object], source: str) -> dict[str, object]:
    sensors: dict[str, dict[str, str]] = dict(current["sensors"])  # type: ignore[call-overload]
    titles: dict[str, list[str]] = {}
    for sid, short, title, unit in firmware_rows(header):
        key = str(sid)
        titles.setdefault(key, [])
        if title in titles[key]:
            continue
        titles[key].append(title)  # an id two boards share (79: gases board or SHT31)
        entry = sensors.get(key)
        name = entry["name"] if entry is not None else quantity(short)
        shown = UNITS.get(unit, unit)
        sensors[key] = {"name": name, "unit": shown, "title": " / ".join(titles[key])}
        if not shown:
            del sensors[key]["unit"]
    ordered = {key: sensors[key] for key in sorted(sensors, key=int)}
    return {"about": current["about"], "source": source, "sensors": ordered}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("header", type=Path, help="lib/Sensors/Sensors.h of smartcitizen-kit-2x")
    parser.add_argument("--commit", required=True, help="the firmware commit the header is from")
    parser.add_argument("--out", type=Path, default=CATALOGUE)
    args = parser.parse_args()
    current = json.loads(args.out.read_text(encoding="utf-8"))
    source = f"fablabbcn/smartcitizen-kit-2x lib/Sensors/Sensors.h @ {args.commit}"
    built = rebuild(args.header.read_text(encoding="utf-8"), current, source)
    args.out.write_text(json.dumps(built, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"{args.out}: {len(built['sensors'])} sensors")  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
