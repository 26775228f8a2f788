"""The trap network's monitor (seed 000's Monitor script), run beside an MQTT source with codec
"trapnet": silent nodes go down and their subscribers get notification requests, a message with
a `Reply` key is answered after it is committed, and fieldbridge's own LWT and status are kept
on `<prefix>/monitor/<name>/…`.

It publishes on a connection of its own, whose will is `Failed`; it reads and writes liveness
only through the store, so a restart picks up where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from fieldbridge.model import Decoded, DeviceStatus, NotifyChannel, Subscriber, Transition
from fieldbridge.sources.mqtt.client import tls_context
from fieldbridge.sources.mqtt.monitor_settings import MonitorSettings
from fieldbridge.timefmt import iso

if TYPE_CHECKING:
    from fieldbridge.sources.access import Liveness
    from fieldbridge.sources.mqtt.settings import MqttSettings

log = logging.getLogger("fieldbridge.sources.mqtt.monitor")

RUNNING, FAILED, STOPPED = b"Running", b"Failed", b"Stopped"
TRAP_TOPIC = "EnvironmentalServices"
OWN_FAMILIES = frozenset({"monitor", "Control", "email", "sms"})


def family(topic: str, prefix: str) -> str:
    """The topic family a message is counted under in the status JSON."""
    levels = topic.split("/")
    if levels[0] == prefix and len(levels) > 1:
        return levels[1]
    return TRAP_TOPIC if levels[0] == TRAP_TOPIC else "Team"


def email(t: Transition, to: str, sender: str) -> dict[str, str]:
    if t.to_status is DeviceStatus.DOWN:
        subject = f"Node {t.device} is down"
        body = f"Node {t.device} is down since {iso(t.at)}: {t.reason}."
    else:
        subject = f"Node {t.device} is up again"
        body = f"Node {t.device} is up again: a message arrived at {iso(t.at)}."
    return {"To": to, "From": sender, "Subject": subject, "Body": body}


def sms(t: Transition, number: str) -> dict[str, str]:
    state = "DOWN" if t.to_status is DeviceStatus.DOWN else "UP"
    return {"Number": number, "Text": f"fieldbridge: node {t.device} {state} at {iso(t.at)}"}


class TrapnetMonitor:
    """Liveness checks, notification requests, replies, LWT and status for one MQTT source."""

    def __init__(
        self,
        settings: MqttSettings,
        monitor: MonitorSettings,
        liveness: Liveness,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.source = settings
        self.settings = monitor
        self.liveness = liveness
        self.clock = clock
        self.prefix = str(settings.codec_options.get("prefix", "AKLC"))
        self.base = f"{self.prefix}/monitor/{monitor.name}"
        self.counts: Counter[str] = Counter()
        self.connections = 0
        self.started = clock()
        self._client: paho.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> TrapnetMonitor:
        self._loop = asyncio.get_running_loop()
        s = self.source
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"{s.client_id}-monitor", clean_session=True
        )
        if s.username is not None:
            client.username_pw_set(
                s.username, s.password.get_secret_value() if s.password else None
            )
        context = tls_context(s)
        if context is not None:
            client.tls_set_context(context)
        client.will_set(f"{self.base}/LWT", FAILED, qos=0, retain=True)
        client.reconnect_delay_set(1, max(1, round(s.max_backoff)))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        endpoint = s.endpoint
        client.connect_async(endpoint.host, endpoint.port, keepalive=s.keepalive)
        client.loop_start()
        self._client = client
        self._task = asyncio.create_task(self._run(), name=f"monitor-{self.settings.name}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        client = self._client
        if client is None:
            return
        if client.is_connected():  # a clean stop is not a failure
            info = client.publish(f"{self.base}/LWT", STOPPED, qos=0, retain=True)
            await asyncio.to_thread(info.wait_for_publish, 2.0)
        client.disconnect()
        client.loop_stop()
        self._client = None

    def _on_connect(self, client: paho.Client, userdata: object, *args: object) -> None:
        reason = args[1] if len(args) > 1 else None
        if getattr(reason, "is_failure", False):
            log.warning("monitor %s: the broker refused the connection (%s)", self.base, reason)
            return
        self.connections += 1
        client.publish(f"{self.base}/LWT", RUNNING, qos=0, retain=True)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._connected.set)

    def _on_disconnect(self, client: paho.Client, userdata: object, *args: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._connected.clear)

    async def _run(self) -> None:
        next_status = 0.0
        while True:
            await asyncio.sleep(self.settings.check_period_s)
            try:
                await self.check()
                if self.clock() >= next_status:
                    self.publish_status()
                    next_status = self.clock() + self.settings.status_period_min * 60
            except Exception:  # the store or the broker failed: try again next period
                log.exception("monitor %s: liveness check failed; retrying", self.base)

    # --- what the source tells it ----------------------------------------------------------------

    def publishes(self, topic: str) -> bool:
        """Whether `topic` is one the monitor publishes on (its own status, replies and
        notification requests): not device data, so not ingested when the source sees it."""
        levels = topic.split("/")
        return levels[0] == self.prefix and len(levels) > 1 and levels[1] in OWN_FAMILIES

    def received(self, topic: str) -> None:
        self.counts[family(topic, self.prefix)] += 1

    def committed(self, topic: str, payload: bytes) -> None:
        """A message is stored: answer its Reply key (seed: `Status received` or `Data
        received` on <prefix>/Control/<node>)."""
        if not self.settings.replies or b"Reply" not in payload or self._client is None:
            return
        try:
            decoded = self.source.decoder(payload, {"topic": topic}, self.clock())
            data = orjson.loads(payload)
        except Exception:  # not JSON, or refused: nothing to answer
            return
        first = decoded[0] if decoded else None
        if not isinstance(data, dict) or "Reply" not in data or not isinstance(first, Decoded):
            return
        status = "last_status" in (first.attributes or {})
        answer = b"Status received" if status else b"Data received"
        self._client.publish(f"{self.prefix}/Control/{first.device}", answer, qos=0)

    # --- liveness ------------------------------------------------------------------------------

    async def check(self) -> int:
        """Mark silent nodes down, then publish what transitions still owe; how many were
        published in full."""
        await self.liveness.mark_silent_down(self.clock(), source=self.source.name)
        return await self.notify_pending()

    async def notify_pending(self) -> int:
        done = 0
        for transition in await self.liveness.pending_transitions(source=self.source.name):
            subscribers = (await self.liveness.subscribers([transition.device])).get(
                transition.device, []
            )
            for subscriber in subscribers:
                if not await self._publish(transition, subscriber):
                    return done  # not connected or no PUBACK: the next check tries again
            await self.liveness.mark_notified(transition.id, self.clock())
            done += 1
        return done

    async def _publish(self, t: Transition, subscriber: Subscriber) -> bool:
        client = self._client
        if client is None or not client.is_connected():
            return False
        if subscriber.channel is NotifyChannel.EMAIL:
            topic = f"{self.prefix}/email/send"
            body = email(t, subscriber.address, self.settings.email_from)
        else:
            topic = f"{self.prefix}/sms/send"
            body = sms(t, subscriber.address)
        info = client.publish(topic, orjson.dumps(body), qos=1)
        with contextlib.suppress(RuntimeError, ValueError):  # lost the connection meanwhile
            await asyncio.to_thread(info.wait_for_publish, self.settings.publish_timeout_s)
        published = info.is_published()  # wait_for_publish returns quietly on a timeout
        if not published:
            log.warning("monitor %s: no PUBACK for a notification on %s", self.base, topic)
        return published

    def status(self) -> dict[str, object]:
        """The status JSON (the seed's keys, and a count per topic family)."""
        return {
            "scriptName": self.settings.name,
            "connectionCount": self.connections,
            "upTime(s)": round(self.clock() - self.started),
            "msgCount": sum(self.counts.values()),
            **dict(sorted(self.counts.items())),
        }

    def publish_status(self) -> None:
        if self._client is not None and self._client.is_connected():
            self._client.publish(f"{self.base}/status", orjson.dumps(self.status()), qos=0)
