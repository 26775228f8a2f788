"""A fake Smart Citizen platform: the MQTT subscriber of smartcitizen-api, attached to a real
Mosquitto the test starts, that checks what integrations.md §6.3 lists and stores what the
platform would store (§6.1; `app/lib/mqtt_messages_handler.rb`, `app/grammars/raw_message.tt`,
`app/models/storer.rb` and `concerns/data_parser/storer.rb` of fablabbcn/smartcitizen-api).

What it checks (each failure is a line in `violations`): the publish QoS is at least 1 (it
subscribes at QoS 2, as the platform does, so a message arrives at the QoS it was published
with); the topic is `device/sck/<6 lowercase alnum>/(readings|readings/raw|hello|info)` or
`device/inventory`; for a known token, `readings` is JSON with a non-empty `data` list whose
items each have a `recorded_at` that parses (ISO 8601 or `YYYY-MM-DD HH:MM:SS`) and is at most
one day ahead of the receive time, and a `sensors` list of `{id, value}`; `readings/raw`
follows the platform's grammar; `info` is JSON.

What it does silently, as the platform does, exposed for assertions: non-ASCII bytes are
stripped from every payload (`stripped`); a token the platform does not know drops the
message unread (`dropped`); a sensor id or key not in its sensor table is skipped, the rest of
the item stored (`skipped`). `ingested` is what the platform stored, separate from the
violations: per token, one value per (recorded_at, sensor id), a repeat overwriting it as a
Kairos data point at the same time does (`Ingested.repeats` counts them).
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

# The platform's sensor table (GET /v0/sensors): id -> default key. Only 10 = battery is
# confirmed (db/seeds.rb); 12, 13, 14 and 29 are seed 003's example ids, named as the SCK 1.1.
SENSORS: Mapping[int, str] = {
    10: "battery",
    12: "temperature",
    13: "humidity",
    14: "light",
    29: "noise",
}
# The topics smartcitizen-api subscribes to (lib/tasks/mqtt_subscriber.rake), at QoS 2.
PLATFORM_TOPICS = (
    "device/sck/+/readings",
    "device/sck/+/readings/raw",
    "device/sck/+/hello",
    "device/sck/+/info",
    "device/inventory",
)
TOPIC = re.compile(r"device/sck/([a-z0-9]{6})/(readings|readings/raw|hello|info)")
TOKEN = re.compile(r"[a-z0-9]{6}")
FUTURE = timedelta(days=1)
# raw_message.tt: '{' ' '* pair* ' '* '}', pair = (t ' '* ':' <time> / <number> ' '* ':' ' '*
# (<float> / <number> / null)) ' '* ','? ' '*, number = [-0-9]+; the message is stripped first.
_RAW_TIME = r"t *:(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z)"
_RAW_VALUE = r"([-0-9]+) *: *([-0-9]+(?:\.[-0-9]+)?|null)"
RAW_PAIR = re.compile(rf"(?:{_RAW_TIME}|{_RAW_VALUE}) *,? *")
# A string id with a digit is taken for a sensor id (device.rb); Rails casts it like to_i.
RUBY_INT = re.compile(r"\s*([+-]?\d+)")

Value = float | str | None


@dataclass
class Ingested:
    """What the platform stored (Kairos data points, device rows), per device token."""

    readings: dict[str, dict[tuple[datetime, int], Value]] = field(default_factory=dict)
    repeats: int = 0  # readings stored again at the same time and sensor (overwritten)
    hardware_info: dict[str, Any] = field(default_factory=dict)
    hellos: Counter[str] = field(default_factory=Counter)
    inventory: list[str] = field(default_factory=list)


class FakeSmartCitizen:
    """The platform's MQTT subscriber on a broker at 127.0.0.1:`port`.

    `devices`: the tokens the platform knows; `sensors`: its sensor table (id -> key). It keeps
    a persistent session (clean session off, a fixed client id) and subscribes again on every
    connect, so it follows a broker restart.
    """

    def __init__(
        self,
        port: int,
        devices: Iterable[str],
        *,
        sensors: Mapping[int, str] = SENSORS,
        client_id: str = "fake-smartcitizen-platform",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.devices = frozenset(devices)
        bad = sorted(t for t in self.devices if not TOKEN.fullmatch(t))
        if bad:
            raise ValueError(f"platform tokens are 6 lowercase alphanumerics, not {bad}")
        self.sensors = dict(sensors)
        self._keys = {key: sid for sid, key in self.sensors.items()}
        self.port = port
        self.clock = clock
        self.ingested = Ingested()
        self.violations: list[str] = []
        self.dropped: Counter[str] = Counter()  # unknown token -> messages dropped unread
        self.skipped: Counter[tuple[str, str]] = Counter()  # (token, id as sent) -> skips
        self.stripped = 0  # non-ASCII bytes removed from payloads
        self.messages = 0
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False
        )
        self._client.reconnect_delay_set(0.05, 0.5)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *a: self._subscribed.set()
        self._client.on_message = self._on_message

    # --- life ---------------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        self._client.connect("127.0.0.1", self.port, keepalive=10)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            raise TimeoutError("the fake Smart Citizen platform could not subscribe")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> FakeSmartCitizen:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._client.is_connected()

    def _on_connect(self, client: paho.Client, *args: Any) -> None:
        # Everything, at QoS 2: a message arrives at its publish QoS, and one published where
        # the platform does not listen is seen (and is a violation: the platform never gets it).
        client.subscribe("#", 2)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self.take(message.topic, bytes(message.payload), message.qos)

    # --- for assertions -----------------------------------------------------------------------

    def readings(self, token: str) -> dict[tuple[datetime, int], Value]:
        """A copy of what is stored for `token`: (recorded_at, sensor id) -> value."""
        with self._lock:
            return dict(self.ingested.readings.get(token, {}))

    def skipped_ids(self) -> set[tuple[str, str]]:
        with self._lock:
            return set(self.skipped)

    # --- the platform's handler ---------------------------------------------------------------

    def take(self, topic: str, payload: bytes, qos: int) -> None:
        """One message as the platform's handler takes it."""
        with self._lock:
            self.messages += 1
            self._take(topic, payload, qos)

    def _violation(self, text: str) -> None:
        self.violations.append(text)

    def _take(self, topic: str, payload: bytes, qos: int) -> None:
        if not any(paho.topic_matches_sub(f, topic) for f in PLATFORM_TOPICS):
            self._violation(f"{topic}: the platform does not subscribe to this topic")
            return
        if qos < 1:
            self._violation(f"{topic}: published with QoS {qos}; the platform requires QoS 1")
        text = bytes(b for b in payload if b < 0x80).decode("ascii")
        self.stripped += len(payload) - len(text)
        if topic == "device/inventory":
            self.ingested.inventory.append(text)
            return
        match = TOPIC.fullmatch(topic)
        if match is None:
            self._violation(
                f"{topic}: not device/sck/<6 lowercase alphanumerics>/"
                "(readings|readings/raw|hello|info)"
            )
            return
        token, kind = match.groups()
        if token not in self.devices:
            self.dropped[token] += 1
            return
        if kind == "hello":
            self.ingested.hellos[token] += 1
        elif kind == "info":
            try:
                self.ingested.hardware_info[token] = orjson.loads(text)
            except orjson.JSONDecodeError:
                self._violation(f"{topic}: info is not JSON: {text[:80]!r}")
        elif kind == "readings":
            try:
                body = orjson.loads(text)
            except orjson.JSONDecodeError:
                self._violation(f"{topic}: not JSON: {text[:80]!r}")
                return
            data = body.get("data") if isinstance(body, dict) else None
            if not isinstance(data, list) or not data:
                self._violation(f"{topic}: no non-empty data list: {text[:80]!r}")
                return
            self._store(topic, token, data)
        else:
            item = self._raw(topic, text)
            if item is not None:
                self._store(topic, token, [item])

    def _raw(self, topic: str, text: str) -> dict[str, Any] | None:
        """The raw grammar into the readings shape; None (a violation) if it does not parse."""
        body = text.strip()
        inner = body[1:-1].strip(" ") if body[:1] == "{" and body[-1:] == "}" else None
        item: dict[str, Any] = {"recorded_at": None, "sensors": []}
        at = 0
        while inner is not None and at < len(inner):
            pair = RAW_PAIR.match(inner, at)
            if pair is None or pair.end() == at:
                break
            at = pair.end()
            stamp, sid, value = pair.groups()
            if stamp is not None:
                item["recorded_at"] = stamp
            elif value != "null":
                item["sensors"].append({"id": sid, "value": value})
        if inner is None or at < len(inner):
            self._violation(f"{topic}: not the raw grammar {{t:<time>,<id>:<value>,...}}: {text!r}")
            return None
        return item

    def _store(self, topic: str, token: str, data: list[Any]) -> None:
        """Storer#store: each item alone; a bad item fails (a violation), the others store."""
        now = self.clock()
        stored = self.ingested.readings.setdefault(token, {})
        for index, item in enumerate(data):
            where = f"{topic}: data[{index}]"
            if not isinstance(item, dict):
                self._violation(f"{where}: not an object: {item!r}")
                continue
            at = self._time(where, item.get("recorded_at"), now)
            sensors = item.get("sensors")
            if not isinstance(sensors, list) or not all(
                isinstance(s, dict) and {"id", "value"} <= s.keys() for s in sensors
            ):
                self._violation(f"{where}: sensors is not a list of {{id, value}}: {sensors!r}")
                continue
            if at is None:
                continue
            for sensor in sensors:
                sid = self._sensor_id(sensor["id"])
                if sid is None:
                    self.skipped[(token, str(sensor["id"]))] += 1
                    continue
                if (at, sid) in stored:
                    self.ingested.repeats += 1
                stored[(at, sid)] = _value(sensor["value"])

    def _time(self, where: str, raw: object, now: datetime) -> datetime | None:
        if not isinstance(raw, str) or not raw.strip():
            self._violation(f"{where}: no recorded_at (the platform: No timestamp given)")
            return None
        try:
            at = datetime.fromisoformat(raw.strip())
        except ValueError:
            self._violation(f"{where}: recorded_at {raw!r} does not parse")
            return None
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)  # the platform's server zone
        if at > now + FUTURE:
            self._violation(
                f"{where}: recorded_at {raw!r} is more than 1 day ahead of {now.isoformat()} "
                "(the platform: Timestamp not within range)"
            )
            return None
        return at.astimezone(UTC)

    def _sensor_id(self, raw: object) -> int | None:
        """Device#create_or_find_component_for_sensor_reading: an integer, or a string with a
        digit, is a sensor id; other text is a sensor key. None: not in the sensor table."""
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw if raw in self.sensors else None
        if not isinstance(raw, str):
            return None
        if any(c.isdigit() for c in raw):
            number = RUBY_INT.match(raw)
            sid = int(number.group(1)) if number else None
            return sid if sid in self.sensors else None
        return self._keys.get(raw)


def _value(raw: object) -> Value:
    """A value that parses as a float is stored as one (`Float(value) rescue value`)."""
    if isinstance(raw, bool):
        return str(raw).lower()
    if isinstance(raw, int | float):
        return float(raw)
    if isinstance(raw, str):
        try:
            return float(raw)
        except ValueError:
            return raw
    return None
