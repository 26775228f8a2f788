"""The generic JSON codec ("json"): device, time and readings picked out of any JSON by paths."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from fieldbridge.codecs import strict_json
from fieldbridge.codecs.jsonpath import MISSING, Path, lookup, parse_path, show
from fieldbridge.codecs.numbers import finite_number
from fieldbridge.codecs.options import check_options
from fieldbridge.errors import DecodeError
from fieldbridge.model import Codec, Decoded, Reading, check_device_id
from fieldbridge.printable import escape

MAX_TEXT = 256
MAX_READINGS = 10_000  # numeric leaves taken from one message
LAST_SECOND = 253402300800.0  # year 10000
TimeUnit = Literal["auto", "s", "ms", "us", "ns"]
SCALE = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


class ReadingPath(BaseModel):
    """One entry of `readings`: where the value is, and its unit."""

    model_config = ConfigDict(extra="forbid")

    path: str
    unit: str | None = Field(default=None, max_length=32)


class JsonOptions(BaseModel):
    """codec_options of codec "json"."""

    model_config = ConfigDict(extra="forbid")

    device_topic_segment: int | None = (
        None  # "sensors/<id>/data" -> 1; negative counts from the end
    )
    device_path: str | None = None  # e.g. "meta.id"; neither: the whole topic is the device
    timestamp_path: str | None = None  # absent in a message: the receive time
    time_unit: TimeUnit = "auto"
    readings: dict[str, str | ReadingPath] | None = None  # None: every numeric leaf
    exclude: list[str] = Field(default_factory=list)  # paths left out of "every numeric leaf"
    numeric_strings: bool = False  # "20.3" counts as a number
    id_path: str | None = None  # a message id, for idempotency
    kind: str | None = Field(default=None, min_length=1, max_length=64)
    # A message with no reading (text only, e.g. a trap event) is stored, not refused.
    keep_without_readings: bool = False

    @field_validator("device_path", "timestamp_path", "id_path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None:
            parse_path(value)
        return value

    @field_validator("exclude")
    @classmethod
    def _paths(cls, values: list[str]) -> list[str]:
        for value in values:
            parse_path(value)
        return values

    @field_validator("readings", mode="before")
    @classmethod
    def _reading_shapes(cls, readings: object) -> object:
        if isinstance(readings, dict):
            for quantity, spec in readings.items():
                if not isinstance(spec, str | dict):
                    raise ValueError(
                        f'{quantity}: write a path ("data.t") or {{path = "data.t", unit = "°C"}}'
                    )
                if isinstance(spec, dict):
                    try:
                        ReadingPath.model_validate(spec)
                    except ValidationError as exc:
                        err = exc.errors()[0]
                        place = ".".join(str(part) for part in err["loc"])
                        raise ValueError(f"{quantity}.{place}: {err['msg']}") from None
        return readings

    @field_validator("readings")
    @classmethod
    def _reading_paths(
        cls, readings: dict[str, str | ReadingPath] | None
    ) -> dict[str, str | ReadingPath] | None:
        if readings is None:
            return None
        if not readings:
            raise ValueError("name at least one reading, or leave readings out for every number")
        for quantity, spec in readings.items():
            if not quantity or len(quantity) > MAX_TEXT or "\x00" in quantity:
                raise ValueError(f"{quantity!r}: a quantity name is 1 to {MAX_TEXT} characters")
            try:
                parse_path(spec if isinstance(spec, str) else spec.path)
            except ValueError as exc:
                raise ValueError(f"{quantity}: {exc}") from None
        return readings

    @model_validator(mode="after")
    def _one_device_source(self) -> JsonOptions:
        if self.device_topic_segment is not None and self.device_path is not None:
            raise ValueError("give device_topic_segment or device_path, not both")
        return self


class JsonMappingCodec:
    """The configured codec: a pure function of (payload, meta, received_at)."""

    __slots__ = (
        "device_path",
        "exclude",
        "id_path",
        "keep_empty",
        "kind",
        "mapped",
        "numeric_strings",
        "segment",
        "time_unit",
        "timestamp_path",
    )

    def __init__(self, options: JsonOptions) -> None:
        self.segment = options.device_topic_segment
        self.device_path = _maybe(options.device_path)
        self.timestamp_path = _maybe(options.timestamp_path)
        self.time_unit = options.time_unit
        self.id_path = _maybe(options.id_path)
        self.kind = options.kind
        self.keep_empty = options.keep_without_readings
        self.numeric_strings = options.numeric_strings
        self.mapped: tuple[tuple[str, Path, str | None], ...] | None = None
        if options.readings is not None:
            self.mapped = tuple(
                (q, parse_path(s), None) if isinstance(s, str) else (q, parse_path(s.path), s.unit)
                for q, s in options.readings.items()
            )
        used = [p for p in (self.device_path, self.timestamp_path, self.id_path) if p]
        self.exclude = frozenset([*used, *(parse_path(p) for p in options.exclude)])

    def __call__(
        self, payload: bytes, meta: Mapping[str, Any], received_at: float
    ) -> list[Decoded]:
        data = strict_json.loads(payload, "payload")
        if type(data) is list:  # e.g. seed 002: a list of measurement objects
            if not data:
                raise DecodeError("the array is empty; send at least one object")
            return [
                self._message(item, f"[{i}]", meta, received_at, orjson.dumps(item))
                for i, item in enumerate(data)
            ]
        return [self._message(data, "", meta, received_at, None)]

    def _message(
        self,
        item: object,
        where: str,
        meta: Mapping[str, Any],
        received_at: float,
        raw: bytes | None,
    ) -> Decoded:
        if type(item) is not dict:
            raise DecodeError(f"{where or 'payload'}: must be a JSON object, got {_type(item)}")
        device = self._device(item, where, meta)
        at = received_at
        stamped = False
        if self.timestamp_path is not None:
            value = lookup(item, self.timestamp_path)
            if value is not MISSING and value is not None:
                at = _timestamp(value, self.time_unit, _at(where, self.timestamp_path))
                stamped = True
        readings = self._mapped(item, where, at) if self.mapped else self._leaves(item, where, at)
        if not readings and not self.keep_empty:
            raise DecodeError(self._no_readings(where), cause="no_readings")
        key = None
        if self.id_path is not None:
            value = lookup(item, self.id_path)
            if value is not MISSING and value is not None:
                key = f"{device}/{_text(value, _at(where, self.id_path))}"
        elif stamped:
            # Same device, same time, same bytes: a redelivery, not a new measurement.
            body = raw if raw is not None else orjson.dumps(item)
            key = f"{device}/{hashlib.blake2b(body, digest_size=12).hexdigest()}"
        return Decoded(
            device=device, readings=readings, kind=self.kind, idempotency_key=key, raw=raw
        )

    def _no_readings(self, where: str) -> str:
        what = "none of the mapped paths is in it" if self.mapped else "it has no number"
        return (
            f"{where + ': it' if where else 'payload'} holds no readings ({what}); set "
            "codec_options.keep_without_readings = true to store text-only messages"
        )

    def _device(self, item: dict[str, Any], where: str, meta: Mapping[str, Any]) -> str:
        if self.device_path is not None:
            value = lookup(item, self.device_path)
            here = _at(where, self.device_path)
            if value is MISSING or value is None:
                raise DecodeError(f"{here}: no device id there (codec_options.device_path)")
            return _device_id(value, here)
        topic = meta.get("topic")
        if not isinstance(topic, str) or not topic:
            raise DecodeError(
                "no topic to take the device from; set codec_options.device_path to the "
                "device id's place in the JSON"
            )
        if self.segment is None:
            return _device_id(topic, "topic")
        levels = topic.split("/")
        try:
            return _device_id(levels[self.segment], f"topic level {self.segment}")
        except IndexError:
            raise DecodeError(
                f"topic {topic[:120]!r} has no level {self.segment} "
                "(codec_options.device_topic_segment counts from 0)"
            ) from None

    def _mapped(self, item: dict[str, Any], where: str, at: float) -> tuple[Reading, ...]:
        out = []
        for quantity, path, unit in self.mapped or ():
            value = lookup(item, path)
            if value is MISSING:
                continue  # a device may leave out what it did not measure
            out.append(Reading(quantity, self._number(value, _at(where, path)), at, 0, unit))
        return tuple(out)

    def _leaves(self, item: dict[str, Any], where: str, at: float) -> tuple[Reading, ...]:
        out: list[Reading] = []
        # Iterative, in document order: nesting deeper than Python's recursion limit is valid JSON.
        stack: list[tuple[Path, object]] = [((k,), v) for k, v in reversed(item.items())]
        while stack:
            path, value = stack.pop()
            if path in self.exclude:
                continue
            if isinstance(value, dict):
                stack.extend(((*path, k), v) for k, v in reversed(value.items()))
            elif isinstance(value, list):
                stack.extend(((*path, n), v) for n, v in reversed(list(enumerate(value))))
            elif type(value) in (int, float) or (self.numeric_strings and type(value) is str):
                number = finite_number(value)
                if number is None:
                    continue
                name = show(path)
                if len(name) > MAX_TEXT or "\x00" in name:
                    raise DecodeError(_bad_name(where, name))
                out.append(Reading(name, number, at))
                if len(out) > MAX_READINGS:
                    raise DecodeError(f"{where or 'payload'}: more than {MAX_READINGS} numbers")
        return tuple(out)

    def _number(self, value: object, where: str) -> float | None:
        if value is None:
            return None
        if type(value) is bool:
            return 1.0 if value else 0.0
        if type(value) is str and not self.numeric_strings:
            raise DecodeError(
                f"{where}: {value[:40]!r} is text; set codec_options.numeric_strings = true "
                "to read numbers sent as text"
            )
        number = finite_number(value)
        if number is None:
            raise DecodeError(f"{where}: must be a finite number, got {_type(value)}")
        return number


def build(options: Mapping[str, Any]) -> Codec:
    """The codec for a source's codec_options; ValueError names a bad option."""
    return JsonMappingCodec(check_options(JsonOptions, options))


def _maybe(text: str | None) -> Path | None:
    return parse_path(text) if text is not None else None


def _timestamp(value: object, unit: TimeUnit, where: str) -> float:
    """Unix seconds of ISO 8601 text or an epoch number (unit "auto": see the docs)."""
    number: float | None = None
    if type(value) is int or type(value) is float:
        number = finite_number(value)
    elif type(value) is str:
        number = (
            finite_number(value)
            if value.strip().lstrip("-").replace(".", "", 1).isdigit()
            else None
        )
        if number is None:
            try:
                moment = datetime.fromisoformat(value.strip())
            except ValueError:
                raise DecodeError(
                    f"{where}: {value[:40]!r} is neither ISO 8601 nor an epoch number"
                ) from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return _in_range(moment.timestamp(), value, where)
    if number is None:
        raise DecodeError(f"{where}: must be ISO 8601 text or an epoch number, got {_type(value)}")
    if unit == "auto":
        size = abs(number)
        unit = "s" if size < 1e11 else "ms" if size < 1e14 else "us" if size < 1e17 else "ns"
    return _in_range(number * SCALE[unit], value, where)


def _in_range(seconds: float, value: object, where: str) -> float:
    if not (math.isfinite(seconds) and 0 <= seconds < LAST_SECOND):
        raise DecodeError(f"{where}: {str(value)[:40]!r} is out of range (1970 to 9999)")
    return seconds


def _text(value: object, where: str) -> str:
    if type(value) is int:
        value = str(value)
    if type(value) is not str or not value.strip():
        raise DecodeError(f"{where}: must be non-empty text or an integer, got {_type(value)}")
    if len(value) > MAX_TEXT:
        raise DecodeError(f"{where}: longer than {MAX_TEXT} characters")
    if "\x00" in value:
        raise DecodeError(f"{where}: must not contain NUL characters")
    return value


def _device_id(value: object, where: str) -> str:
    device = _text(value, where)
    check_device_id(device, where)
    return device


def _bad_name(where: str, name: str) -> str:
    """Why a reading's name (its path) is refused; a NUL is shown escaped, never raw."""
    if "\x00" in name:
        shown = escape(name[:40]) + ("..." if len(name) > 40 else "")
        return (
            f"{_at(where, shown)}: the name contains a NUL character at position "
            f"{name.index(chr(0))}; rename the key (stores cannot hold NUL in text)"
        )
    return f"{_at(where, escape(name[:40]))}...: names are at most {MAX_TEXT} characters"


def _at(where: str, path: Path | str) -> str:
    name = path if isinstance(path, str) else show(path)
    return f"{where}.{name}" if where else name


def _type(value: object) -> str:
    return {dict: "object", list: "array", str: "text", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )
