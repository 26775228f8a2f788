"""Decodes Smart Citizen Kit MQTT messages: readings (JSON and raw), hello, info, inventory."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson

from fieldbridge.codecs import strict_json
from fieldbridge.codecs.smartcitizen.catalogue import Sensor
from fieldbridge.codecs.smartcitizen.raw import parse_raw
from fieldbridge.errors import DecodeError
from fieldbridge.model import Decoded, Reading, Refusal, check_device_id

KIND = "smartcitizen"
# The platform takes the token with `device/sck/(.*?)/`; a prefix before `device/` (the
# platform's MQTT_TOPICS prefixes) is allowed, the message type must be one of the four.
TOPIC = re.compile(r"(?:^|/)device/sck/([^/]+)/(readings/raw|readings|hello|info)$")
# Factory-test reports: the kit firmware publishes `device/inventory`, the platform's spec
# `device/sck/inventory`; it takes any topic containing "inventory".
INVENTORY = re.compile(r"(?:^|/)device/(?:sck/)?inventory$")
INVENTORY_DEVICE = "inventory"  # the device they are stored under: they carry no kit token
FUTURE_LIMIT = 86400.0  # the platform refuses readings more than 1 day in the future
MAX_TOKEN = 64
MAX_RAW_TEXT = 256  # characters of a non-numeric value kept in the reading's extra
SENSOR_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}", re.ASCII)
OTHER_TIME = re.compile(
    r"(\d{4})[-/](\d{1,2})[-/](\d{1,2})"
    r"(?:[T ](\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?)?"
    r" ?(Z|UTC|GMT|[+-]\d{2}:?\d{2})?",
    re.ASCII | re.IGNORECASE,
)
EXAMPLE = '{"data":[{"recorded_at":"2024-09-25T13:19:38Z","sensors":[{"id":10,"value":95}]}]}'


class SmartCitizenCodec:
    """The configured codec: a pure function of (payload, meta, received_at)."""

    __slots__ = ("catalogue", "registered_only", "tokens")

    def __init__(
        self,
        catalogue: Mapping[int, Sensor],
        *,
        tokens: frozenset[str] | None = None,
        registered_only: bool = False,
    ) -> None:
        self.catalogue = catalogue
        self.tokens = tokens
        self.registered_only = registered_only

    def __call__(
        self, payload: bytes, meta: Mapping[str, Any], received_at: float
    ) -> list[Decoded | Refusal]:
        token, what = self._topic(meta)
        # The platform strips non-ASCII from every message before parsing it.
        text = payload if payload.isascii() else payload.decode("ascii", "ignore").encode()
        if what == "readings":
            return self._readings(token, _json(text, what), received_at)
        if what == "readings/raw":
            return [self._raw(token, text.decode(), received_at)]
        if what == "info":
            info = _json(text, what)
            if not isinstance(info, dict):
                raise DecodeError("info: the payload must be a JSON object of hardware info")
            return [self._message(token, attributes={"hardware_info": info})]
        if what == "inventory":
            report = _json(text, what)
            if not isinstance(report, dict):
                raise DecodeError("inventory: the payload must be a JSON object (a test report)")
            return [self._message(token, attributes={"inventory": report})]
        return [self._message(token)]  # hello: the device is seen, nothing is measured

    def _topic(self, meta: Mapping[str, Any]) -> tuple[str, str]:
        topic = meta.get("topic")
        if not isinstance(topic, str):
            raise DecodeError(
                "no MQTT topic: the smartcitizen codec takes the kit token from the topic "
                "device/sck/<token>/...; use it on an MQTT source"
            )
        match = TOPIC.search(topic)
        if match is not None:
            token, what = match.groups()
        elif INVENTORY.search(topic) is not None:
            token, what = INVENTORY_DEVICE, "inventory"
        else:
            raise DecodeError(
                f"topic {topic[:120]!r} is not device/sck/<token>/readings, readings/raw, "
                "hello or info, nor device/inventory"
            )
        if len(token) > MAX_TOKEN:
            raise DecodeError(f"token in topic {topic[:120]!r} is longer than {MAX_TOKEN}")
        check_device_id(token, "kit token in the topic")
        if self.tokens is not None and token not in self.tokens:
            raise DecodeError(
                f"token {token!r} is not in codec_options.tokens of this source; add it there "
                "to accept this kit",
                cause="unknown_token",
            )
        return token, what

    def _message(
        self,
        token: str,
        readings: tuple[Reading, ...] = (),
        key: str | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> Decoded:
        return Decoded(
            device=token,
            readings=readings,
            kind=KIND,
            idempotency_key=key,
            attributes=attributes,
            require_registered=self.registered_only,
        )

    def _readings(self, token: str, data: object, received_at: float) -> list[Decoded | Refusal]:
        """One message of every valid item; each invalid item is refused on its own (the
        platform stores each valid item), and only a payload without a valid item is refused."""
        items = data.get("data") if type(data) is dict else None
        if type(items) is not list or not items:
            raise DecodeError(f'readings: "data" is missing or empty; send e.g. {EXAMPLE}')
        readings: list[Reading] = []
        identity: list[str] = []
        refused: list[Refusal] = []
        first_at: float | None = None
        for index, item in enumerate(items):
            try:
                at = self._item(index, item, received_at, readings, identity)
            except DecodeError as exc:
                refused.append(Refusal(exc.reason, _alone(item)))
                continue
            if first_at is None:
                first_at = at
        if first_at is None:  # nothing valid: the payload is refused whole
            if len(refused) == 1:
                raise DecodeError(refused[0].reason)
            reasons = "; ".join(r.reason for r in refused[:3])
            more = f"; and {len(refused) - 3} more" if len(refused) > 3 else ""
            raise DecodeError(f"no valid item in data: {reasons}{more}")
        message = self._message(token, tuple(readings), _key(token, first_at, identity))
        return [message, *refused] if refused else [message]

    def _item(
        self,
        index: int,
        item: object,
        received_at: float,
        readings: list[Reading],
        identity: list[str],
    ) -> float:
        """Append one item's readings and identity; its time, or DecodeError saying where.

        Places ("data[0].sensors[1]") are spelled out only for a refusal: this is the hot path.
        """
        if type(item) is not dict:
            raise DecodeError(f"data[{index}]: must be an object with recorded_at and sensors")
        at = _recorded_at(item.get("recorded_at"), index, received_at)
        sensors = item.get("sensors")
        if type(sensors) is not list:
            raise DecodeError(f"data[{index}].sensors: required, a list of {{id, value}}")
        stamp = _stamp(at)
        added: list[Reading] = []
        for number, sensor in enumerate(sensors):
            if type(sensor) is not dict:
                raise DecodeError(
                    f"data[{index}].sensors[{number}]: must be an object {{id, value}}"
                )
            sid, value = sensor.get("id"), sensor.get("value")
            try:
                added.append(self._reading(sid, value, at, stamp))
            except _Refused as refused:
                raise DecodeError(f"data[{index}].sensors[{number}].{refused}") from None
        readings.extend(added)
        identity.append(";".join(r.key or "" for r in added) or stamp)
        return at

    def _raw(self, token: str, text: str, received_at: float) -> Decoded:
        raw = parse_raw(text)
        at = _recorded_at(raw.recorded_at, None, received_at)
        stamp = _stamp(at)
        try:
            readings = tuple(self._reading(sid, value, at, stamp) for sid, value in raw.sensors)
        except _Refused as refused:  # an id out of range, or not a number (`-1`, `1-2`)
            raise DecodeError(f"raw readings: {refused}") from None
        identity = [";".join(r.key or "" for r in readings) or stamp]
        return self._message(token, readings, _key(token, at, identity))

    def _reading(self, sid: object, value: object, at: float, stamp: str) -> Reading:
        number, extra = _value(value)
        if type(sid) is str and sid.isascii() and sid.isdigit() and len(sid) <= 9:
            sid = int(sid)
        if type(sid) is int and 0 <= sid <= 65535:
            sensor = self.catalogue.get(sid)
            if sensor is None:  # kept, not dropped as the platform does, and marked
                extra = {**(extra or {}), "unknown_sensor": True}
                return Reading(f"sensor_{sid}", number, at, sid, None, extra, f"{sid}@{stamp}")
            return Reading(sensor.name, number, at, sid, sensor.unit, extra, f"{sid}@{stamp}")
        if type(sid) is str and SENSOR_KEY.fullmatch(sid):  # a sensor key names itself
            return Reading(sid, number, at, 0, None, extra, f"{sid}@{stamp}")
        raise _Refused(f"id: must be a sensor id from 0 to 65535 or a sensor key, got {sid!r:.40}")


class _Refused(Exception):
    """A sensor entry's refusal, without its place; the caller adds where it was."""


def _alone(item: object) -> bytes | None:
    """A refused item as a payload of its own, so quarantine keeps just what was refused
    (None, the whole payload, should it not serialise)."""
    try:
        return orjson.dumps({"data": [item]})
    except orjson.JSONEncodeError:
        return None


def _stamp(at: float) -> str:
    return f"{int(at)}" if at.is_integer() else repr(at)


def _json(text: bytes, what: str) -> object:
    """The payload's JSON (non-ASCII is stripped already, so it is UTF-8); duplicate keys are
    refused."""
    try:
        return strict_json.loads(text, "payload")
    except DecodeError as exc:
        raise DecodeError(
            f"{what}: {exc.reason}", malformed=exc.malformed, cause=exc.cause
        ) from None


def _recorded_at(value: object, index: int | None, received_at: float) -> float:
    """Unix seconds of a kit's time text; naive times are UTC. Refuses > 1 day ahead.

    `index` is the item's place in "data" (None for raw readings), named only in a refusal.
    """
    if value is None or value == "":
        raise DecodeError(f"{_item(index)}.recorded_at: no timestamp given")
    if type(value) is not str:
        raise DecodeError(f"{_item(index)}.recorded_at: must be a time as text (ISO 8601)")
    moment: datetime | None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        moment = _ruby_time(value)
    if moment is None:
        raise DecodeError(
            f"{_item(index)}.recorded_at: {value[:40]!r} is not a time "
            "(ISO 8601, e.g. 2024-09-25T13:19:38Z or 2024-09-25 13:19:38, or "
            "2024/09/25 13:19:38)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        at = moment.timestamp()
    except (OverflowError, ValueError):
        raise DecodeError(f"{_item(index)}.recorded_at: {value[:40]!r} is out of range") from None
    if at > received_at + FUTURE_LIMIT:
        received = datetime.fromtimestamp(received_at, UTC).isoformat(timespec="seconds")
        raise DecodeError(
            f"{_item(index)}.recorded_at: {value[:40]!r} is more than 1 day in the future "
            f"(received {received.replace('+00:00', 'Z')}); check the kit's clock"
        )
    return at


def _ruby_time(text: str) -> datetime | None:
    """The other forms the platform's `Time.parse` reads that kits are known to send:
    `/` between date parts, a zone written `UTC`/`GMT` or `+0200` after a space; else None."""
    match = OTHER_TIME.fullmatch(text.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        moment = datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((fraction or "0")[:6].ljust(6, "0")),
        )
    except ValueError:
        return None
    if zone is None or zone.upper() in ("Z", "UTC", "GMT"):
        return moment.replace(tzinfo=UTC)
    offset = int(zone[1:3]) * 3600 + int(zone[-2:]) * 60
    if offset >= 86400:
        return None
    return moment.replace(tzinfo=timezone(timedelta(seconds=-offset if zone[0] == "-" else offset)))


def _item(index: int | None) -> str:
    return "t" if index is None else f"data[{index}]"


def _value(value: object) -> tuple[float | None, dict[str, Any] | None]:
    """A number as float; text that is not a number is kept raw in `extra`, as the platform does."""
    if value is None:
        return None, None
    kind = type(value)
    if kind is float or kind is int:
        try:
            number = float(value)  # type: ignore[arg-type]
        except OverflowError:
            return None, {"raw": str(value)[:MAX_RAW_TEXT]}
        return (number, None) if math.isfinite(number) else (None, {"raw": repr(value)})
    if kind is bool:
        return (1.0 if value else 0.0), None
    if kind is str:
        assert isinstance(value, str)
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if math.isfinite(number):
            return number, None
        return None, {"raw": value[:MAX_RAW_TEXT].replace("\x00", "\\x00")}
    raise _Refused(f"value: must be a number or text, got {kind.__name__}")


def _key(token: str, at: float, identity: list[str]) -> str:
    """The message's idempotency key: the kit and what it measured when (device+time+sensors).

    Kit, then time, then the digest: a kit's new keys sort after its earlier ones, so a commit
    appends to the key index instead of touching a random page per message.
    """
    digest = hashlib.blake2b("|".join(identity).encode(), digest_size=12).hexdigest()
    return f"{token}/{int(at):011d}/{digest}"
