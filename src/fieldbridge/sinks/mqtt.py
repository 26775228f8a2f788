"""MQTT sink ([[sinks.mqtt]]): publishes messages to any broker, the cursor moving after PUBACK."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis

from fieldbridge.clients.redisconn import RedisError, open_redis
from fieldbridge.clients.redisconn import shown as shown_redis
from fieldbridge.codecs.redis_stream import entry_order
from fieldbridge.errors import (
    ConfigError,
    PartialDeliveryError,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from fieldbridge.model import JournalEntry
from fieldbridge.plugin import SinkType, register_sink
from fieldbridge.sinks.base import Destination, Gate
from fieldbridge.sinks.mqtt_connection import MqttConnection
from fieldbridge.sinks.mqtt_render import (
    TOPIC_FIELDS,
    handler_item,
    handler_payload,
    json_payload,
    render_topic,
    smartcitizen_ahead,
    smartcitizen_payload,
    stream_entries,
    topic_fields,
)
from fieldbridge.sinks.mqtt_settings import SMARTCITIZEN_TOKEN, MqttSinkSettings

if TYPE_CHECKING:
    from fieldbridge.store import Store

log = logging.getLogger("fieldbridge.sinks.mqtt")


class MqttSink(Destination):
    """One connection to the broker, opened at the first send and kept; a batch is published
    whole (PUBACKs awaited together), then the engine moves the cursor."""

    def __init__(self, settings: MqttSinkSettings) -> None:
        self.settings = settings
        self.what = f"sink {settings.name}"
        self.wants_payload = self.sends_batches = settings.preset == "mqtt-handler"
        self._template = settings.topic_template
        unknown = topic_fields(self._template) - TOPIC_FIELDS
        if unknown:
            raise ConfigError(
                f"sinks.mqtt.{settings.name}.topic: unknown placeholder(s) "
                f"{', '.join(sorted(unknown))}; known: {', '.join(sorted(TOPIC_FIELDS))}"
            )
        self._identity = settings.identity.fields()
        self._tls = settings.broker.tls(f"sinks.mqtt.{settings.name}.broker")
        self._conn: MqttConnection | None = None
        self._store: Store | None = None
        self._redis: aioredis.Redis | None = None
        self._owed_last_id: str | None = None  # published, not yet written to Redis
        # The last one read, kept while Redis does not answer; until the interval key says
        # otherwise the sink's `interval` (INTERVAL_SECONDS) counts, between cycles as well.
        self._gate = Gate(interval=settings.interval)
        self.published = 0  # MQTT messages confirmed
        self.last_id: str | None = None  # mqtt-handler: the last entry id confirmed
        # mqtt-handler: the entry id last_id held when the sink started (see send)
        self._published_upto: tuple[int, int] | None = None
        self.already_published = 0  # entries not sent again because last_id showed them sent

    def bind(self, store: Store) -> None:
        self._store = store

    def health(self) -> Mapping[str, Any] | None:
        shown: dict[str, Any] = {"connected": self._conn is not None and self._conn.usable}
        if self.last_id is not None:
            shown["last_id"] = self.last_id
        if self.already_published:
            shown["already_published"] = self.already_published
        return shown

    async def __aenter__(self) -> MqttSink:
        keys = self.settings.redis
        if self.settings.preset == "mqtt-handler" and keys is not None:
            password = keys.password
            self._redis = open_redis(
                keys.url,
                password=None if password is None else password.get_secret_value(),
                timeout=keys.timeout_s,
            )
            self._published_upto = await self._read_last_id()
        return self

    async def _read_last_id(self) -> tuple[int, int] | None:
        """The entry id `<prefix>:last_id` holds (entries up to it were published), if any."""
        assert self._redis is not None
        try:
            raw = await self._redis.get(self._key("last_id"))
        except (RedisError, OSError):
            return None  # not known: nothing is skipped
        return entry_order(raw.decode(errors="replace").removeprefix("(")) if raw else None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()
            self._redis = None

    # --- the MQTT-Handler's keys ------------------------------------------------------------

    def _key(self, name: str) -> str:
        keys = self.settings.redis
        return f"{keys.prefix if keys is not None else 'mqtt_sender'}:{name}"

    async def gate(self) -> Gate | None:
        """mqtt-handler: `<prefix>:enabled` ("0" = off) and `<prefix>:interval` (seconds),
        read each cycle; a missing key or a silent Redis keeps the last value."""
        if self._redis is None:
            return None
        try:
            enabled, interval = await self._redis.mget(self._key("enabled"), self._key("interval"))
            if self._owed_last_id is not None:
                await self._write_last_id(self._owed_last_id)
        except (RedisError, OSError) as exc:
            log.debug("%s: Redis keys not read (%s); keeping the last values", self.what, exc)
            return self._gate
        is_open, every = self._gate.open, self._gate.interval
        if enabled is not None:
            is_open = enabled.decode(errors="replace").strip() != "0"
        if interval is not None:
            try:
                every = max(0.0, float(interval))
            except ValueError:
                log.warning(
                    "%s: %s = %r is not a number of seconds; keeping %s",
                    self.what,
                    self._key("interval"),
                    interval,
                    every,
                )
        why = None if is_open else f"{self._key('enabled')} is 0 in Redis"
        self._gate = Gate(is_open, every, why)
        return self._gate

    async def _write_last_id(self, entry_id: str) -> None:
        assert self._redis is not None
        await self._redis.set(self._key("last_id"), "(" + entry_id)
        self._owed_last_id = None

    async def _note_last_id(self, entry_id: str) -> None:
        """`<prefix>:last_id` = "(" + the last id published, as the MQTT-Handler kept it. A
        Redis that does not answer gets it at the next cycle (the cursor is ours; this key is
        for the tooling that reads it)."""
        self.last_id = entry_id
        if self._redis is None:
            return
        try:
            await self._write_last_id(entry_id)
        except (RedisError, OSError) as exc:
            self._owed_last_id = entry_id
            log.warning(
                "%s: %s not written to Redis %s (%s); written at the next cycle",
                self.what,
                self._key("last_id"),
                shown_redis(self.settings.redis.url if self.settings.redis else ""),
                exc,
            )

    # --- sending ----------------------------------------------------------------------------

    async def _connection(self) -> MqttConnection:
        if self._conn is not None and self._conn.usable:
            return self._conn
        if self._conn is not None:
            self._conn.drop()
        broker = self.settings.broker
        password = broker.password
        conn = MqttConnection(
            host=broker.host,
            port=broker.port,
            tls=self._tls,
            client_id=self.settings.client_id,
            timeout=broker.timeout_s,
            what=self.what,
            username=broker.username,
            password=None if password is None else password.get_secret_value(),
            keepalive=broker.keepalive,
            broker=f"the MQTT broker {broker.host}:{broker.port}",
        )
        await conn.open()
        self._conn = conn
        return conn

    async def send(self, entries: Sequence[JournalEntry]) -> None:
        if self.settings.preset == "mqtt-handler":
            await self._send_values(entries)
            return
        refused: dict[int, str] = {}
        if self.settings.preset == "smartcitizen":
            entries, refused = self._not_ahead(entries)
        messages = await self._render(entries)
        if messages:
            await self._publish(messages)
        if refused:
            raise PartialDeliveryError(
                f"{self.what}: {len(refused)} message(s) not sent: {next(iter(refused.values()))}",
                refused,
            )

    def _not_ahead(
        self, entries: Sequence[JournalEntry]
    ) -> tuple[list[JournalEntry], dict[int, str]]:
        """smartcitizen: the entries to send, and those refused (journal id -> why) because
        the platform would drop their readings: timed more than a day ahead."""
        now = time.time()
        fresh: list[JournalEntry] = []
        refused: dict[int, str] = {}
        for entry in entries:
            why = smartcitizen_ahead(entry, self.settings.sensor_ids, now)
            if why is None:
                fresh.append(entry)
            else:
                refused[entry.id] = why
        return fresh, refused

    async def _publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        conn = await self._connection()
        qos, retain = self.settings.qos, self.settings.retain
        try:
            waiters = [conn.publish(topic, payload, qos, retain) for topic, payload in messages]
            await conn.confirm(waiters)
        except RetryableDeliveryError:
            conn.drop()
            self._conn = None
            raise
        self.published += len(messages)

    async def _send_values(self, entries: Sequence[JournalEntry]) -> None:
        """mqtt-handler: the entries as the MQTT-Handler's values lists, at most
        `entries_per_message` in each; then last_id names the last entry sent."""
        groups: dict[str, list[tuple[str, dict[str, str]]]] = {}
        last = None
        for entry in entries:
            items = stream_entries(entry)
            if self._published_upto is not None and "stream" in entry.meta:
                items = self._not_yet_published(items)
            if items:
                groups.setdefault(self._topic(entry, None), []).extend(items)
                last = items[-1][0]
        if last is None:
            return
        per, identity = self.settings.entries_per_message, self._identity
        messages = [
            (topic, handler_payload(handler_item(i, f, identity) for i, f in items[n : n + per]))
            for topic, items in groups.items()
            for n in range(0, len(items), per)
        ]
        await self._publish(messages)
        await self._note_last_id(last)

    def _not_yet_published(
        self, items: list[tuple[str, dict[str, str]]]
    ) -> list[tuple[str, dict[str, str]]]:
        """Leave out the stream entries up to the last_id read at start: last_id is written
        right after the PUBACK and the cursor after the batch, so a restart in between reads
        them again. Only until the sink is past it: a later replay sends everything again."""
        upto = self._published_upto
        fresh = []
        for item in items:
            order = entry_order(item[0])
            if order is not None and upto is not None and order <= upto:
                self.already_published += 1
                continue
            fresh.append(item)
        if fresh:
            self._published_upto = None
        return fresh

    async def _render(self, entries: Sequence[JournalEntry]) -> list[tuple[str, bytes]]:
        preset = self.settings.preset
        if preset == "json":
            return [(self._topic(e, None), json_payload(e)) for e in entries]
        return await self._smartcitizen(entries)

    async def _smartcitizen(self, entries: Sequence[JournalEntry]) -> list[tuple[str, bytes]]:
        by_device: dict[str, list[JournalEntry]] = {}
        for entry in entries:
            by_device.setdefault(entry.device, []).append(entry)
        messages = []
        for device, own in by_device.items():
            token = await self._token(device)
            payload = smartcitizen_payload(own, self.settings.sensor_ids)
            if payload is not None:
                messages.append((self._topic(own[0], token), payload))
        return messages

    async def _token(self, device: str) -> str:
        found = self.settings.tokens.get(device)
        if self._store is not None:
            registered = await self._store.get_device(device)
            if registered is not None:
                value = registered.attributes.get(self.settings.token_attribute)
                if isinstance(value, str) and value:
                    found = value
        if not found:
            raise PermanentDeliveryError(
                f"{self.what}: device {device!r} has no Smart Citizen token: set its "
                f"attribute {self.settings.token_attribute!r} (fieldbridge devices set) or "
                f"tokens.{device} in the sink's settings",
                body="no Smart Citizen token",
            )
        if not SMARTCITIZEN_TOKEN.fullmatch(found):
            # The platform drops a message of a token it did not issue, unseen.
            raise PermanentDeliveryError(
                f"{self.what}: device {device!r} has the Smart Citizen token {found!r}, which is "
                "not 6 lowercase letters and digits as the platform issues them; fix its "
                f"attribute {self.settings.token_attribute!r} or tokens.{device}",
                body="not a Smart Citizen token",
            )
        return found

    def _topic(self, entry: JournalEntry, token: str | None) -> str:
        fields = dict(self._identity)
        fields.update(
            device=entry.device, kind=entry.kind or "", source=entry.source, token=token or ""
        )
        return render_topic(self._template, fields)


def build(settings: MqttSinkSettings) -> MqttSink:
    return MqttSink(settings)


# Without a settings file: every reading again as JSON on the local broker (the one the default
# MQTT sources use, embedded when none runs), so a new installation has a sink to watch.
DEFAULT_RUN = (
    {
        "name": "local-mqtt",
        "preset": "json",
        "topic": "fieldbridge/out/{device}",
        "broker": {"url": "mqtt://127.0.0.1:1883"},
    },
)

register_sink("mqtt", SinkType(MqttSinkSettings, build, DEFAULT_RUN))
