"""InfluxDB line protocol of stored messages (spec integrations.md §4.3).

Pure: messages in, lines out. Hand-written because the escaping rules differ per element and
the official clients (influxdb-client, influxdb-python) bring their own HTTP stacks and retry
loops, which would bypass the sink engine's cursor and back-off.

A message's readings become points: measurement and field name from the sink's templates, tags
from the message and the registry, time = measured time in the sink's precision. Readings of one
message that share measurement, tags and time go into one line, so each line belongs to exactly
one message (a rejected line names the message to dead-letter).
"""

from __future__ import annotations

import math
import re
import string
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from fieldbridge import packed
from fieldbridge.model import JournalEntry, Reading, ReadingRow
from fieldbridge.store import jsoncol

# Where a tag's value comes from; `tags` lists which of these a sink writes.
TAG_NAMES = ("device", "kind", "source", "channel", "team", "unit")
TEMPLATE_NAMES = frozenset({"quantity", "source", "kind", "device", "team", "channel"})
SCALE = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}

_KEY_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\r": r"\r"})
_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n", "\r": r"\r"})
_STRING_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"'})
# A backslash right before a character InfluxDB unescapes in that element, or at the end,
# cannot be carried: InfluxDB reads it as an escape (the line is refused or the name changes;
# tried on influxd 1.6.7). Such backslashes are dropped. Measurements and field keys unescape
# comma, space, equals sign and quote; tag keys and values comma, space and equals sign.
_MEASUREMENT_LOOSE = re.compile(r'\\+(?=[, ="]|\Z)')
_TAG_LOOSE = re.compile(r"\\+(?=[, =]|\Z)")
_FIELD_KEY_LOOSE = _MEASUREMENT_LOOSE
# InfluxDB refuses "time" as a tag or field key (the whole point is dropped): renamed.
_RESERVED = {"time": "time_"}


def template_names(template: str) -> set[str]:
    """The {names} a measurement or field template uses."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def escape_measurement(name: str) -> str:
    """Comma and space escaped; a leading '#' (a comment line) escaped; backslashes that
    line protocol cannot carry dropped."""
    if "\\" in name:
        name = _MEASUREMENT_LOOSE.sub("", name)
    name = name.translate(_MEASUREMENT_ESCAPES)
    return "\\" + name if name.startswith("#") else name


def escape_tag(text: str) -> str:
    """A tag value: comma, equals sign and space escaped; newlines written as \\n;
    backslashes that line protocol cannot carry dropped."""
    if "\\" in text:
        text = _TAG_LOOSE.sub("", text)
    return text.translate(_KEY_ESCAPES)


def escape_tag_key(key: str) -> str:
    """A tag key: as a tag value, and the reserved key "time" renamed time_."""
    return escape_tag(_RESERVED.get(key, key))


def escape_field_key(key: str) -> str:
    """A field key: as a tag key, but a backslash before a quote is dropped too."""
    key = _RESERVED.get(key, key)
    if "\\" in key:
        key = _FIELD_KEY_LOOSE.sub("", key)
    return key.translate(_KEY_ESCAPES)


def string_field(value: str) -> str:
    return '"' + value.translate(_STRING_ESCAPES) + '"'


def field_value(value: Any) -> str | None:
    """Numbers as floats (so a field never changes type between 1 and 1.5), booleans, text;
    None for what has no line protocol form (non-finite numbers, objects)."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int | float):
        number = float(value)
        return repr(number) if math.isfinite(number) else None
    if isinstance(value, str):
        return string_field(value)
    return None


@dataclass(frozen=True, slots=True)
class Layout:
    """How readings map to points: the sink's naming settings, checked at start."""

    measurement: str  # template, e.g. "{quantity}"
    field: str  # template for a reading's number, e.g. "value"
    tags: tuple[str, ...]  # names from TAG_NAMES
    static_tags: tuple[tuple[str, str], ...]
    precision: str  # s, ms, us or ns


class Line(NamedTuple):
    """One point as a line, and the message it belongs to (a tuple: built once per point)."""

    entry_id: int
    measurement: str  # as in the line (escaped)
    series: str  # measurement and tag set: points of one series go in one request
    fields: Mapping[str, str]  # escaped key -> rendered value
    text: str


def _names(entry: JournalEntry, reading: Reading, team: str | None) -> dict[str, str]:
    return {
        "quantity": reading.quantity,
        "source": entry.source,
        "kind": entry.kind or "",
        "device": entry.device,
        "team": team or "",
        "channel": str(reading.channel),
    }


def _tags(layout: Layout, names: Mapping[str, str], reading: Reading) -> list[tuple[str, str]]:
    values: dict[str, str] = dict(layout.static_tags)
    for tag in layout.tags:
        values[tag] = (reading.unit or "") if tag == "unit" else names[tag]
    extra_tags = (reading.extra or {}).get("tags")
    if isinstance(extra_tags, Mapping):  # a message type's is-tag items (trap network CSV)
        for key, value in extra_tags.items():
            values.setdefault(str(key), str(value))
    pairs = ((escape_tag_key(k), escape_tag(v)) for k, v in values.items())
    return sorted((k, v) for k, v in pairs if k and v)  # sorted by key, as InfluxDB advises


def _fields(layout: Layout, names: Mapping[str, str], reading: Reading) -> dict[str, str]:
    out: dict[str, str] = {}
    if reading.value is not None:
        rendered = field_value(reading.value)
        key = escape_field_key(layout.field.format_map(names))
        if rendered is not None and key:
            out[key] = rendered
        return out
    for key, value in (reading.extra or {}).items():  # a reading without a number: its details
        if key == "tags":
            continue
        rendered = field_value(value)
        escaped = escape_field_key(str(key))
        if rendered is not None and escaped:
            out[escaped] = rendered
    return out


def _naming(
    layout: Layout, reading: Reading, about: tuple[str, str | None, str, str | None]
) -> tuple[str, str, str]:
    """(measurement, series, field key) of a reading without is-tag items."""
    source, kind, device, team = about
    names = {
        "quantity": reading.quantity,
        "source": source,
        "kind": kind or "",
        "device": device,
        "team": team or "",
        "channel": str(reading.channel),
    }
    measurement = escape_measurement(layout.measurement.format_map(names)) or "unknown"
    series = measurement + "".join(f",{k}={v}" for k, v in _tags(layout, names, reading))
    return measurement, series, escape_field_key(layout.field.format_map(names))


# A message's source, kind, device and team; a plain reading's quantity (channel 0, no unit)
# or its quantity, channel and unit; and the start of its line up to the value, its series and
# the series' hash.
About = tuple[str, str | None, str, str | None]
PlainKey = str | tuple[str, int, str | None]
Named = tuple[str, str, int]
PackedHeads = tuple[list[str], list[int]]
MISSING: Any = object()  # not in a cache (None is a cached answer)
NAMING_CACHE = 65_536  # combinations of device, quantity, channel and unit kept worked out
VALUE_CACHE = 65_536  # texts of values kept (a sensor's readings take few distinct values)


def reading_of(row: ReadingRow) -> Reading:
    """A stored reading row as a Reading."""
    _, quantity, value, measured_at, channel, unit, extra = row
    return Reading(quantity, value, measured_at, channel, unit, jsoncol.load(extra) or None)


def readings_of(entry: JournalEntry) -> Sequence[Reading]:
    """A message's readings, whether it was read with Reading objects, with rows or packed."""
    if entry.readings:
        return entry.readings
    if entry.rows:
        return [reading_of(row) for row in entry.rows]
    return packed.readings(entry.packed) if entry.packed is not None else ()


class Rendered(NamedTuple):
    """A batch's lines in order: the text, the message and the hash of the series of each
    (same positions); and, when every series names its device (a `device` tag), where each
    message's lines end with the hash of its device: a device's lines may then travel
    together, as each series belongs to one device."""

    texts: list[str]
    owners: list[JournalEntry]
    hashes: list[int]
    spans: list[tuple[int, int]] | None = None


class Renderer:
    """Lines of messages for one layout. The same few combinations of device, quantity,
    channel and unit repeat across batches: their naming is worked out once and kept."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._scale = SCALE[layout.precision]
        self._naming: dict[tuple[object, ...], tuple[str, str, str]] = {}
        # (source, kind, device, team) -> (quantity, channel, unit), or the quantity alone for
        # channel 0 without a unit, -> (start, series, hash): the naming of plain readings as
        # the row and packed paths need it.
        self._plain: dict[About, dict[PlainKey, Named]] = {}
        self._plain_size = 0
        self._values: dict[float, str] = {}  # repr of the values seen lately (they repeat)
        self._devices: dict[str, int] | None = {} if "device" in layout.tags else None
        # (about, a packed text's quantities) -> the starts of its lines and their hashes
        self._packed: dict[tuple[About, str], PackedHeads | None] = {}

    def entry_lines(self, entry: JournalEntry, team: str | None = None) -> list[Line]:
        """The lines of one message, in the order their first reading appears."""
        scale, cache, layout = self._scale, self._naming, self.layout
        grouped: dict[tuple[str, str, int], dict[str, str]] = {}
        about = (entry.source, entry.kind, entry.device, team)
        for reading in readings_of(entry):
            stamp = round(reading.measured_at * scale)
            value = reading.value
            if value is not None and not reading.extra:  # the common case
                if not math.isfinite(value):
                    continue
                key = (reading.quantity, reading.channel, reading.unit, about)
                named = cache.get(key)
                if named is None:
                    if len(cache) >= NAMING_CACHE:
                        cache.clear()
                    named = cache[key] = _naming(layout, reading, about)
                measurement, series, field = named
                if field:
                    grouped.setdefault((series, measurement, stamp), {})[field] = repr(value)
                continue
            names = _names(entry, reading, team)
            fields = _fields(layout, names, reading)
            if not fields:
                continue
            measurement = escape_measurement(layout.measurement.format_map(names)) or "unknown"
            tags = _tags(layout, names, reading)
            series = measurement + "".join(f",{k}={v}" for k, v in tags)
            grouped.setdefault((series, measurement, stamp), {}).update(fields)
        lines = []
        for (series, measurement, stamp), fields in grouped.items():
            if len(fields) == 1:
                [(name, rendered)] = fields.items()
                text = f"{series} {name}={rendered} {stamp}"
            else:
                text = f"{series} {','.join(f'{k}={v}' for k, v in fields.items())} {stamp}"
            lines.append(Line(entry.id, measurement, series, fields, text))
        return lines

    def render(
        self, entries: Sequence[JournalEntry], teams: Mapping[str, str | None]
    ) -> list[Line]:
        out: list[Line] = []
        for entry in entries:
            out.extend(self.entry_lines(entry, teams.get(entry.device)))
        return out

    def texts(self, entries: Sequence[JournalEntry], teams: Mapping[str, str | None]) -> Rendered:
        """The lines of a batch as `render` makes them, as text. A message whose readings are
        all plain numbers (the common case) is rendered without building Reading or Line
        objects: from its packed text (JournalEntry.packed) or from its rows."""
        texts: list[str] = []
        owners: list[JournalEntry] = []
        hashes: list[int] = []
        spans: list[tuple[int, int]] | None = None
        devices = self._devices
        if devices is not None:
            spans = []
            if len(devices) >= NAMING_CACHE:
                devices.clear()
        add_text, add_hash = texts.append, hashes.append
        scale, isfinite = self._scale, math.isfinite
        values = self._values
        if len(values) >= VALUE_CACHE:
            values.clear()
        value_text, keep_text = values.get, values.__setitem__
        if len(self._packed) >= NAMING_CACHE:
            self._packed.clear()
        packed_heads = self._packed.get
        packed_at, packed_tail = "", ""
        for entry in entries:
            team = teams.get(entry.device)
            rows = entry.rows
            joined = entry.packed
            if joined is not None:
                at_text, quantities, numbers = joined.split(packed.RS)
                about = (entry.source, entry.kind, entry.device, team)
                heads = packed_heads((about, quantities), MISSING)
                if heads is MISSING:
                    heads = self._packed_heads(about, quantities)
                if heads is not None:
                    if at_text != packed_at:  # consecutive messages often share their time
                        packed_at = at_text
                        packed_tail = f" {round(float(at_text) * scale)}"
                    heads_texts, crcs = heads
                    if len(crcs) == 1:
                        add_text(f"{heads_texts[0]}{numbers}{packed_tail}")
                    else:
                        values_of = zip(heads_texts, numbers.split(packed.US), strict=True)
                        texts += [f"{h}{v}{packed_tail}" for h, v in values_of]
                    hashes += crcs
                    owners += [entry] * len(crcs)
                    if spans is not None and devices is not None:
                        spans.append((len(texts), _device_hash(devices, entry.device)))
                    continue  # else the general path
            elif rows:
                about = (entry.source, entry.kind, entry.device, team)
                naming = self._naming_of(about)
                start = len(texts)
                at: float | None = None
                tail = ""
                for _, quantity, value, measured_at, channel, unit, extra in rows:
                    if value is None or extra is not None:
                        break  # details or tags of its own: the general path
                    text = value_text(value)
                    if text is None:
                        if not isfinite(value):
                            continue  # no line protocol form, as entry_lines
                        text = repr(value)
                        if value and type(value) is float:  # 0.0 == -0.0: not kept
                            keep_text(value, text)
                    # Channel 0 without a unit (most readings) is kept under the quantity.
                    key = quantity if channel == 0 and unit is None else (quantity, channel, unit)
                    named = naming.get(key) or self._named(naming, about, key)
                    head, _, crc = named
                    if not head:
                        continue  # the field's name came out empty: no line, as entry_lines
                    if measured_at != at:  # a message's readings mostly share their time
                        at = measured_at
                        tail = f" {round(measured_at * scale)}"
                    add_text(f"{head}{text}{tail}")
                    add_hash(crc)
                else:
                    count = len(texts) - start
                    # A series twice in one message (fields that share a line, or a quantity
                    # at several times) takes the general path, which groups by time. Equal
                    # series have equal hashes; two series whose hashes collide go there too.
                    if count < 2 or len(set(hashes[start:])) == count:
                        owners.extend([entry] * count)
                        if spans is not None and devices is not None and count:
                            spans.append((len(texts), _device_hash(devices, entry.device)))
                        continue
                del texts[start:], hashes[start:]
            start = len(texts)
            for line in self.entry_lines(entry, team):
                add_text(line.text)
                owners.append(entry)
                add_hash(series_hash(line.series))
            if spans is not None and devices is not None and len(texts) > start:
                spans.append((len(texts), _device_hash(devices, entry.device)))
        return Rendered(texts, owners, hashes, spans)

    def _naming_of(self, about: About) -> dict[PlainKey, Named]:
        """The plain readings' naming kept for a message's source, kind, device and team."""
        naming = self._plain.get(about)
        if naming is None:
            if self._plain_size >= NAMING_CACHE:
                self._plain.clear()
                self._plain_size = 0
            naming = self._plain[about] = {}
        return naming

    def _named(
        self,
        naming: dict[PlainKey, Named],
        about: About,
        key: PlainKey,
    ) -> Named:
        """Work out and keep the naming of a plain reading (`key`: the quantity alone for
        channel 0 without a unit)."""
        full = (key, 0, None) if isinstance(key, str) else key
        named = naming[key] = self._plain_naming(about, full)
        self._plain_size += 1
        return named

    def _packed_heads(self, about: About, quantities: str) -> PackedHeads | None:
        """The start of each line of a message packed with these quantities (joined by US)
        and their series' hashes, kept; None when it needs the general path (a series twice,
        or a field whose name came out empty)."""
        naming = self._naming_of(about)
        named = [
            naming.get(q) or self._named(naming, about, q) for q in quantities.split(packed.US)
        ]
        crcs = [crc for _, _, crc in named]
        heads: PackedHeads | None = ([head for head, _, _ in named], crcs)
        if len(set(crcs)) != len(crcs) or not all(head for head, _, _ in named):
            heads = None
        self._packed[about, quantities] = heads
        return heads

    def _plain_naming(self, about: About, key: tuple[str, int, str | None]) -> Named:
        """The start of a plain reading's line up to its value ("" when the field's name
        comes out empty), its series and the series' hash."""
        quantity, channel, unit = key
        reading = Reading(quantity, 0.0, 0.0, channel, unit)
        _, series, field = _naming(self.layout, reading, about)
        return (f"{series} {field}=" if field else ""), series, series_hash(series)


def _device_hash(known: dict[str, int], device: str) -> int:
    crc = known.get(device)
    if crc is None:
        crc = known[device] = zlib.crc32(device.encode())
    return crc


def series_hash(series: str) -> int:
    """Which lane a series travels in is this modulo the lanes (stable across batches)."""
    return zlib.crc32(series.encode())


def render(
    entries: Sequence[JournalEntry], layout: Layout, teams: Mapping[str, str | None]
) -> list[Line]:
    """The lines of a batch (a Renderer of its own: use one Renderer to keep its cache)."""
    return Renderer(layout).render(entries, teams)
