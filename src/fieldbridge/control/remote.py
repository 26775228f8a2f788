"""Answers commands published on the broadcast and request topics; never stops on bad input."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from fieldbridge.clients.redisconn import RedisError, open_redis
from fieldbridge.control.settings import ControlSettings
from fieldbridge.errors import RetryableDeliveryError
from fieldbridge.sinks.mqtt_connection import MqttConnection
from fieldbridge.sinks.mqtt_render import handler_item, handler_payload

log = logging.getLogger("fieldbridge.control")

QUEUE = 64  # commands waiting; more are dropped with a log line (a flood is not a backlog)
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0


@dataclass(frozen=True, slots=True)
class ControlContext:
    """What of the running service the commands report on or act on (app.py builds it)."""

    status: Callable[[], Awaitable[dict[str, Any]]]
    sinks: Callable[[], Awaitable[list[dict[str, Any]]]]
    devices: Callable[[], Awaitable[dict[str, Any]]]
    restart: Callable[[int], None]  # stop gracefully, then exit with this code


class CommandError(Exception):
    """A command that gets an error reply; the message says what to send instead."""


class RemoteControl:
    """One MQTT connection subscribed (QoS 0, as the seed) to both command topics, one
    worker answering commands in order; reconnects with back-off."""

    def __init__(self, settings: ControlSettings, context: ControlContext) -> None:
        self.settings = settings
        self._context = context
        self.broadcast = settings.topic(settings.topic_broadcast)
        self.request = settings.topic(settings.topic_request)
        self.response = settings.topic(settings.topic_response)
        self.values = settings.topic(settings.topic_values)
        self._identity = settings.identity.fields()
        self._tls = settings.broker.tls("control.broker")
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE)
        self._conn: MqttConnection | None = None
        self._redis: aioredis.Redis | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.answered = 0

    async def __aenter__(self) -> RemoteControl:
        redis = self.settings.redis
        self._redis = open_redis(
            redis.url,
            password=None if redis.password is None else redis.password.get_secret_value(),
            timeout=redis.timeout_s,
        )
        self._tasks = [
            asyncio.create_task(self._connect_loop(), name="control-connection"),
            asyncio.create_task(self._work(), name="control-commands"),
        ]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()

    # --- connection -------------------------------------------------------------------------

    async def _connect_loop(self) -> None:
        failures = 0
        broker = self.settings.broker
        while True:
            conn = MqttConnection(
                host=broker.host,
                port=broker.port,
                tls=self._tls,
                client_id=broker.client_id or "fieldbridge-control",
                timeout=broker.timeout_s,
                what="control",
                username=broker.username,
                password=None if broker.password is None else broker.password.get_secret_value(),
                keepalive=broker.keepalive,
                on_message=self._arrived,
                broker=f"the MQTT broker {broker.host}:{broker.port}",
            )
            try:
                await conn.open()
                await conn.subscribe(self.broadcast, 0)
                await conn.subscribe(self.request, 0)
            except (RetryableDeliveryError, OSError) as exc:
                conn.drop()
                failures += 1
                delay = random.uniform(0, min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** min(failures, 20)))
                log.warning("control: %s; connecting again in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                continue
            failures = 0
            self._conn = conn
            log.info("control: listening on %s and %s", self.broadcast, self.request)
            await conn.wait_lost()
            log.warning("control: connection lost (%s); connecting again", conn.lost)
            self._conn = None

    def _arrived(self, topic: str, payload: bytes) -> None:
        # What waits is bounded in bytes too: a payload over the limit is kept only as far as
        # it takes to refuse it.
        limit = self.settings.max_payload_bytes
        if len(payload) > limit:
            payload = payload[: limit + 1]
        try:
            self._queue.put_nowait(payload)
        except asyncio.QueueFull:
            log.warning("control: %d commands waiting; one on %s dropped", QUEUE, topic)

    async def _publish(self, topic: str, payload: bytes, qos: int) -> None:
        conn = self._conn
        if conn is None or not conn.usable:
            raise RetryableDeliveryError("control: not connected to the broker")
        await conn.confirm([conn.publish(topic, payload, qos)])

    async def _reply(self, body: dict[str, Any]) -> None:
        try:
            await self._publish(self.response, orjson.dumps(body), 0)
        except RetryableDeliveryError as exc:
            log.warning("control: reply to %s not sent: %s", body.get("command"), exc)

    # --- commands ---------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            payload = await self._queue.get()
            try:
                await self.handle(payload)
            except Exception:  # a bug in one command must not end the loop
                log.exception("control: a command failed")
                await self._reply({"command": None, "error": "internal error; see the log"})

    async def handle(self, payload: bytes) -> None:
        """Answer one command payload (a reply, or a log line where the seed sent none)."""
        command: Any = None
        try:
            request = self._parse(payload)
            command = request.get("command")
            if not isinstance(command, str) or not command:
                raise CommandError('no "command" (e.g. {"command": "status"})')
            name = command.lower()
            handler = COMMANDS.get(name)
            if handler is None:
                raise CommandError(
                    f"unknown command {command!r}; known: {', '.join(sorted(COMMANDS))}"
                )
            await handler(self, request)
            self.answered += 1
        except CommandError as exc:
            log.warning("control: %s", exc)
            await self._reply({"command": command, "error": str(exc)})
        except RedisError as exc:
            log.warning("control: Redis: %s", exc)
            await self._reply({"command": command, "error": f"Redis is unavailable: {exc}"})

    def _parse(self, payload: bytes) -> dict[str, Any]:
        if len(payload) > self.settings.max_payload_bytes:
            raise CommandError(
                "the command payload is over "
                f"control.max_payload_bytes ({self.settings.max_payload_bytes} bytes)"
            )
        try:
            request = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise CommandError(f"invalid JSON: {exc}") from None
        if not isinstance(request, dict):
            raise CommandError('a command is a JSON object, e.g. {"command": "status"}')
        self._check_hmac(request)
        return request

    def _check_hmac(self, request: dict[str, Any]) -> None:
        secret = self.settings.hmac_secret
        if secret is None:
            return
        given = request.pop("hmac", None)
        if not isinstance(given, str):
            raise CommandError('missing "hmac": commands must be signed (control.hmac_secret)')
        expected = sign(secret.get_secret_value(), request)
        if not hmac.compare_digest(given.lower(), expected):
            raise CommandError('bad "hmac": not signed with control.hmac_secret')
        ts = request.get("ts")
        skew = self.settings.hmac_max_skew_s
        if not isinstance(ts, int | float) or abs(time.time() - ts) > skew:
            raise CommandError(f'"ts" missing or more than {skew:g} s from this device\'s clock')

    def _allowed(self, request: dict[str, Any], command: str) -> str:
        key = request.get("key")
        if not isinstance(key, str) or not key:
            raise CommandError(f'{command} needs "key" (a Redis key)')
        if not any(fnmatch.fnmatchcase(key, p) for p in self.settings.allow_keys):
            raise CommandError(
                f"key {key!r} is not in control.allow_keys "
                f"({', '.join(self.settings.allow_keys) or 'none'})"
            )
        return key

    def _store(self) -> aioredis.Redis:
        assert self._redis is not None
        return self._redis

    async def _reboot(self, request: dict[str, Any]) -> None:
        await self._reply({"command": "reboot"})
        code = self.settings.reboot_exit_code
        if self.settings.reboot_command:
            await self._run_reboot_command()
        log.warning("control: reboot requested; stopping (exit code %d)", code)
        self._context.restart(code)

    async def _run_reboot_command(self) -> None:
        argv = self.settings.reboot_command
        try:
            proc = await asyncio.create_subprocess_exec(*argv)
        except OSError as exc:
            log.error("control: control.reboot_command %s cannot start: %s", argv[0], exc)
            return
        try:
            await asyncio.wait_for(proc.wait(), self.settings.reboot_command_timeout_s)
        except TimeoutError:
            log.warning("control: control.reboot_command still running; going on")

    async def _get_config(self, request: dict[str, Any]) -> None:
        key = self._allowed(request, "get_config")
        raw = await self._store().get(key)
        value = None if raw is None else raw.decode(errors="replace")
        await self._reply({"command": "get_config", "key": key, "value": value})

    async def _set_config(self, request: dict[str, Any]) -> None:
        key = self._allowed(request, "set_config")
        if "value" not in request:
            raise CommandError('set_config needs "value"')
        value = request["value"]
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise CommandError('set_config "value" must be a string or a number')
        await self._store().set(key, value)
        await self._reply({"command": "set_config", "key": key, "value": value})

    async def _send_measurements(self, request: dict[str, Any]) -> None:
        low, high = request.get("min_id", "-"), request.get("max_id", "+")
        count = request.get("count")
        if not isinstance(low, str) or not isinstance(high, str):
            raise CommandError('"min_id" and "max_id" are stream ids ("-", "+", "(" allowed)')
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
            raise CommandError('"count" must be a whole number')
        limit = self.settings.send_max_entries
        if count is None or count > limit or count < 1:
            count = limit
        stream = self.settings.redis.stream
        step = self.settings.send_batch
        sent = 0
        while sent < count:
            rows = await self._store().xrange(stream, low, high, count=min(step, count - sent))
            if not rows:
                break
            items = []
            for raw_id, raw_fields in rows:
                fields = {
                    k.decode(errors="replace"): v.decode(errors="replace")
                    for k, v in raw_fields.items()
                }
                items.append(handler_item(raw_id.decode(), fields, self._identity))
            try:
                await self._publish(self.values, handler_payload(items), 1)
            except RetryableDeliveryError as exc:
                raise CommandError(
                    f"send_measurements stopped after {sent} entries: {exc}"
                ) from None
            sent += len(rows)
            low = "(" + rows[-1][0].decode()
        log.info("control: send_measurements published %d entries to %s", sent, self.values)

    async def _status(self, request: dict[str, Any]) -> None:
        await self._reply({"command": "status", **await self._context.status()})

    async def _sinks(self, request: dict[str, Any]) -> None:
        await self._reply({"command": "sinks", "sinks": await self._context.sinks()})

    async def _devices(self, request: dict[str, Any]) -> None:
        await self._reply({"command": "devices", **await self._context.devices()})


def sign(secret: str, request: dict[str, Any]) -> str:
    """The hmac of a command: HMAC-SHA256 over its JSON without "hmac", keys sorted, compact."""
    body = {k: v for k, v in request.items() if k != "hmac"}
    canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return hmac.new(secret.encode(), canonical, hashlib.sha256).hexdigest()


Handler = Callable[[RemoteControl, dict[str, Any]], Awaitable[None]]
COMMANDS: dict[str, Handler] = {
    "reboot": RemoteControl._reboot,
    "get_config": RemoteControl._get_config,
    "set_config": RemoteControl._set_config,
    "send_measurements": RemoteControl._send_measurements,
    "status": RemoteControl._status,
    "sinks": RemoteControl._sinks,
    "devices": RemoteControl._devices,
}
