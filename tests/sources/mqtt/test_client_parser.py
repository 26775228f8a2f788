"""FastClient's read path against stock paho's: random MQTT packet streams, split at random byte
boundaries, give the same messages, the same replies and the same keepalive state.

Both clients are real: stock paho connects itself over a Unix socket (its "unix" transport) and
is driven by paho's own loop_read/loop_write; FastClient gets a Unix socket of the same listener
and is driven by LoopDriver on an asyncio loop, as the MQTT source drives it. The test is the
broker: it answers CONNECT and then writes the same bytes, in the same pieces, to both.
"""

from __future__ import annotations

import asyncio
import select
import socket
import struct
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fieldbridge.sources.mqtt.client import FastClient, LoopDriver, puback, pubacks

V311 = MQTTProtocolVersion.MQTTv311
V5 = MQTTProtocolVersion.MQTTv5
CONNACK = {V311: b"\x20\x02\x00\x00", V5: b"\x20\x03\x00\x00\x00"}
DEADLINE = 10.0  # seconds for a client to take in one piece; only guards against a hang
# Remaining lengths where the variable-length integer grows a byte (127 | 128, 16 383 | 16 384),
# and a 3-byte one our parser can take whole from one 256 KiB read. The 4-byte form comes from
# padded encodings here and from a real 2 MiB packet in an explicit example (too slow for every
# run: it is about 0.4 s).
LENGTH_EDGES = (0, 1, 126, 127, 128, 129, 16_383, 16_384, 16_385, 100_000)
ONE_BYTE_AT_A_TIME = 120  # streams up to this size are sometimes fed byte by byte
PROPERTY_TEXT = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12
)  # MQTT 5 forbids U+0000 in strings
PARSER = settings(
    max_examples=100,
    deadline=timedelta(seconds=DEADLINE),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,  # the same streams in every CI run; widen by hand when changing client.py
)


# --- the packets, encoded here independently of both parsers -------------------------------


def varint(value: int, pad: int = 0) -> bytes:
    """MQTT's variable byte integer; `pad` zero groups more (a non-minimal form both parsers
    accept), which reaches the 2-, 3- and 4-byte forms without megabyte packets."""
    groups = []
    while True:
        groups.append(value & 0x7F)
        value >>= 7
        if not value:
            break
    groups += [0] * pad
    return bytes(g | 0x80 for g in groups[:-1]) + bytes(groups[-1:])


def fixed_header(first: int, body: bytes, pad: int) -> bytes:
    return bytes([first]) + varint(len(body), pad) + body


@dataclass(frozen=True)
class Publish:
    topic: bytes
    payload: bytes
    qos: int
    mid: int
    dup: bool
    retain: bool
    properties: bytes  # MQTT 5: packed, with their length; MQTT 3.1.1: b""
    pad: int

    def encode(self) -> bytes:
        first = 0x30 | self.dup << 3 | self.qos << 1 | self.retain
        mid = struct.pack("!H", self.mid) if self.qos else b""
        body = struct.pack("!H", len(self.topic)) + self.topic + mid + self.properties
        return fixed_header(first, body + self.payload, self.pad)


@dataclass(frozen=True)
class PubRel:
    mid: int
    tail: bytes  # MQTT 5: reason code and properties, or nothing (success, no properties)
    pad: int

    def encode(self) -> bytes:
        return fixed_header(0x62, struct.pack("!H", self.mid) + self.tail, self.pad)


@dataclass(frozen=True)
class PingResp:
    pad: int

    def encode(self) -> bytes:
        return fixed_header(0xD0, b"", self.pad)


Packet = Publish | PubRel | PingResp


def pattern(size: int) -> bytes:
    """`size` bytes that are not all alike, without drawing each one from hypothesis."""
    return (bytes(range(256)) * (size // 256 + 1))[:size]


@st.composite
def publish_properties(draw: st.DrawFn) -> bytes:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if draw(st.booleans()):
        props.PayloadFormatIndicator = draw(st.integers(0, 1))
    if draw(st.booleans()):
        props.MessageExpiryInterval = draw(st.integers(0, 2**32 - 1))
    if draw(st.booleans()):
        props.ContentType = draw(PROPERTY_TEXT)
    if draw(st.booleans()):
        props.ResponseTopic = draw(PROPERTY_TEXT)
    if draw(st.booleans()):
        props.CorrelationData = draw(st.binary(max_size=16))
    if draw(st.booleans()):
        props.SubscriptionIdentifier = draw(st.integers(1, 268_435_455))
    if draw(st.booleans()):
        props.TopicAlias = draw(st.integers(1, 65_535))
    for key, value in draw(st.lists(st.tuples(PROPERTY_TEXT, PROPERTY_TEXT), max_size=3)):
        props.UserProperty = (key, value)  # paho appends each pair
    return bytes(props.pack())  # type: ignore[no-untyped-call]


def topics(protocol: MQTTProtocolVersion) -> st.SearchStrategy[bytes]:
    shortest = 0 if protocol == V5 else 1  # MQTT 5 may send an empty topic with an alias
    return st.one_of(
        st.text(st.characters(codec="utf-8"), min_size=shortest, max_size=30).map(str.encode),
        st.binary(min_size=shortest, max_size=30),  # invalid UTF-8 too
        st.integers(120, 65_535).map(lambda n: b"t/" + b"x" * (n - 2)),  # up to the longest
    )


@st.composite
def publishes(draw: st.DrawFn, protocol: MQTTProtocolVersion) -> Publish:
    qos = draw(st.integers(0, 2))
    topic = draw(topics(protocol))
    properties = draw(publish_properties()) if protocol == V5 else b""
    overhead = 2 + len(topic) + 2 * bool(qos) + len(properties)
    size = draw(
        st.one_of(
            st.just(-1),  # a small random payload
            st.just(-1),
            st.just(0),
            st.sampled_from(LENGTH_EDGES).map(lambda edge: max(0, edge - overhead)),
        )
    )
    payload = draw(st.binary(max_size=300)) if size < 0 else pattern(size)
    body = overhead + len(payload)
    pad = draw(st.integers(0, 4 - len(varint(body))))
    return Publish(
        topic=topic,
        payload=payload,
        qos=qos,
        mid=draw(st.integers(1, 65_535)) if qos else 0,
        dup=draw(st.booleans()),
        retain=draw(st.booleans()),
        properties=properties,
        pad=pad,
    )


@st.composite
def pubrel_tails(draw: st.DrawFn, protocol: MQTTProtocolVersion) -> bytes:
    if protocol != V5 or draw(st.booleans()):
        return b""
    reason = bytes([draw(st.sampled_from([0x00, 0x92]))])  # success, packet id not found
    if draw(st.booleans()):
        return reason
    props = Properties(PacketTypes.PUBREL)  # type: ignore[no-untyped-call]
    if draw(st.booleans()):
        props.ReasonString = draw(PROPERTY_TEXT)
    return reason + bytes(props.pack())  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class Scenario:
    protocol: MQTTProtocolVersion
    packets: tuple[Packet, ...]
    cuts: tuple[int, ...]  # where the byte stream is split into the pieces the clients read

    @property
    def wire(self) -> bytes:
        return b"".join(packet.encode() for packet in self.packets)

    def pieces(self) -> Iterator[bytes]:
        wire, start = self.wire, 0
        for cut in (*self.cuts, len(wire)):
            yield wire[start:cut]
            start = cut


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    protocol = draw(st.sampled_from([V311, V5]))
    packets: list[Packet] = []
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["publish", "publish", "publish", "pubrel", "pingresp"]))
        if kind == "publish":
            packets.append(draw(publishes(protocol)))
        elif kind == "pubrel":
            waiting = [p.mid for p in packets if isinstance(p, Publish) and p.qos == 2]
            mid = draw(st.sampled_from(waiting) if waiting else st.integers(1, 65_535))
            packets.append(PubRel(mid, draw(pubrel_tails(protocol)), draw(st.integers(0, 2))))
        else:
            packets.append(PingResp(draw(st.integers(0, 3))))
    size = sum(len(p.encode()) for p in packets)
    if size <= ONE_BYTE_AT_A_TIME and draw(st.booleans()):
        cuts = list(range(1, size))  # one byte at a time
    else:
        cuts = draw(st.lists(st.integers(1, max(1, size - 1)), max_size=12))
    return Scenario(protocol, tuple(packets), tuple(sorted(set(cuts) - {0, size})))


# --- the two clients ------------------------------------------------------------------------

Delivered = tuple[bytes | None, bytes, int, int, bool]
"""(topic, or None when not UTF-8, payload, qos, packet id, retain) as the application sees it."""


def utf8_topic(message: paho.MQTTMessage) -> bytes | None:
    try:
        return message.topic.encode()
    except UnicodeDecodeError:  # what the MQTT source quarantines as "(topic not valid UTF-8)"
        return None


@dataclass
class Seen:
    """What one client handed to the application, in order."""

    delivered: list[Delivered] = field(default_factory=list)
    # Per delivered message: (dup, packed properties) when it came through paho's MQTTMessage,
    # None when it came through FastClient's own PUBLISH parser (which reports neither).
    detail: list[tuple[bool, bytes | None] | None] = field(default_factory=list)

    def on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        topic = utf8_topic(message)
        self.delivered.append(
            (topic, bytes(message.payload), message.qos, message.mid, message.retain)
        )
        props = message.properties
        packed = bytes(props.pack()) if props is not None else None  # type: ignore[no-untyped-call]
        self.detail.append((bool(message.dup), packed))

    def on_publish_packet(
        self, topic: str, payload: bytes, qos: int, mid: int, retain: bool
    ) -> None:
        self.delivered.append((topic.encode(), payload, qos, mid, retain))
        self.detail.append(None)


def readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def received(sock: socket.socket) -> bytes:
    """Everything the client has written to the broker's side so far."""
    chunks: list[bytes] = []
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return b"".join(chunks)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def unsent(sock: socket.socket, view: memoryview) -> memoryview:
    """What of `view` the broker's socket did not take (all of it while its buffer is full)."""
    try:
        return view[sock.send(view) :]
    except BlockingIOError:
        return view  # let the client read first


class Stock:
    """An unmodified paho Client over the "unix" transport, driven by its own loop calls."""

    def __init__(self, protocol: MQTTProtocolVersion, path: Path, listener: socket.socket) -> None:
        self.seen = Seen()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id="parser-test",
            protocol=protocol,
            transport="unix",
            manual_ack=True,
        )
        self.client.on_message = self.seen.on_message
        self.client.connect(str(path), keepalive=60)  # writes CONNECT at once
        self.broker, _ = listener.accept()
        self.broker.setblocking(False)
        sock = self.client.socket()
        assert isinstance(sock, socket.socket)
        self.sock = sock

    def pump(self) -> None:
        while readable(self.sock):
            assert self.client.loop_read() == MQTTErrorCode.MQTT_ERR_SUCCESS
        while self.client.want_write():
            assert self.client.loop_write() == MQTTErrorCode.MQTT_ERR_SUCCESS

    def feed(self, piece: bytes) -> None:
        view = memoryview(piece)
        while view:
            view = unsent(self.broker, view)
            self.pump()

    def close(self) -> None:
        self.client.disconnect()
        self.broker.close()


class Ours:
    """fieldbridge's FastClient on a Unix socket of the same listener, driven by LoopDriver."""

    def __init__(
        self,
        protocol: MQTTProtocolVersion,
        path: Path,
        listener: socket.socket,
        keepalive: int = 60,
    ) -> None:
        self.seen = Seen()
        self.client = FastClient(
            CallbackAPIVersion.VERSION2,
            client_id="parser-test",
            protocol=protocol,
            manual_ack=True,
        )
        self.client.on_message = self.seen.on_message
        self.client.on_publish_packet = self.seen.on_publish_packet
        self.driver = LoopDriver(self.client, asyncio.get_running_loop())
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.sock.setblocking(False)
        self.broker, _ = listener.accept()
        self.broker.setblocking(False)
        self.client.use_socket(self.sock)
        self.client.connect_async("broker.invalid", 1883, keepalive=keepalive)
        self.client.reconnect()

    async def pump(self) -> None:
        """Let the event loop run until the client read all there is and wrote all it queued."""
        client, deadline = self.client, time.monotonic() + DEADLINE
        while readable(self.sock) or client.buffered or client.want_write():
            assert time.monotonic() < deadline, "FastClient did not take in what it was sent"
            await asyncio.sleep(0)

    async def feed(self, piece: bytes) -> None:
        view = memoryview(piece)
        while view:
            view = unsent(self.broker, view)
            await self.pump()

    def close(self) -> None:
        self.client.drop()
        self.broker.close()


@contextmanager
def listening() -> Iterator[tuple[Path, socket.socket]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "broker"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
            listener.bind(str(path))
            listener.listen(2)
            yield path, listener


def pinging(client: paho.Client) -> bool:
    """Whether paho still waits for a PINGRESP (loop_misc drops the connection if too long)."""
    return client._ping_t != 0


def assert_same(stock: Seen, ours: Seen, where: str) -> None:
    assert ours.delivered == stock.delivered, where
    for detail, expected in zip(ours.detail, stock.detail, strict=True):
        if detail is not None:
            assert detail == expected, where


async def compare(scenario: Scenario) -> Seen:
    """Feed both clients the scenario's pieces; assert they agree after every piece."""
    with listening() as (path, listener):
        stock = Stock(scenario.protocol, path, listener)
        ours = Ours(scenario.protocol, path, listener)
        try:
            await ours.pump()
            assert received(ours.broker) == received(stock.broker)  # the same CONNECT
            stock.feed(CONNACK[scenario.protocol])
            await ours.feed(CONNACK[scenario.protocol])
            assert stock.client.is_connected() and ours.client.is_connected()
            for client in (stock.client, ours.client):
                # As if a PINGREQ were out and no byte had come since: the stream must answer both.
                client._ping_t = paho.time_func()
                client._last_bytes_received = 0.0
            for number, piece in enumerate(scenario.pieces()):
                before = paho.time_func()
                stock.feed(piece)
                await ours.feed(piece)
                where = f"after piece {number} ({len(piece)} bytes)"
                # Keepalive: every byte read counts as the broker being alive (stock paho counts
                # only at the end of a packet or of a payload read), and a PINGRESP is seen
                # by both at the same byte.
                assert ours.client._last_bytes_received >= before, where
                assert pinging(ours.client) == pinging(stock.client), where
                assert_same(stock.seen, ours.seen, where)
                assert received(ours.broker) == received(stock.broker), where  # PUBREC
            assert stock.client._last_bytes_received > 0
            assert ours.client._in_messages.keys() == stock.client._in_messages.keys()
            # Acknowledge as the MQTT source does: QoS 1 PUBACKs of one commit as one write.
            acked = stock.seen.delivered
            pubacks = b"".join(puback(mid) for _, _, qos, mid, _ in acked if qos == 1)
            if pubacks:
                ours.client.queue_pubacks(pubacks)
            for _, _, qos, mid, _ in acked:
                if qos == 1:
                    stock.client.ack(mid, 1)
            for _, _, qos, mid, _ in acked:
                if qos == 2:
                    stock.client.ack(mid, 2)  # PUBCOMP
                    ours.client.ack(mid, 2)
            stock.pump()
            await ours.pump()
            assert received(ours.broker) == received(stock.broker)
            return ours.seen
        finally:
            ours.close()
            stock.close()


# --- the tests ------------------------------------------------------------------------------


@PARSER
@given(scenarios())
@example(  # a QoS 1 PUBLISH whose remaining length needs 4 bytes, cut inside the header
    Scenario(V311, (Publish(b"a/b", pattern(2_097_152), 1, 7, True, True, b"", 0),), (1, 3, 5))
)
@example(  # 2- and 3-byte remaining lengths parsed whole by our parser (after the first packet)
    Scenario(
        V311,
        (
            Publish(b"first", b"", 0, 0, False, False, b"", 0),
            Publish(b"t/2", pattern(200), 1, 2, False, True, b"", 0),
            Publish(b"t/3", pattern(16_400), 1, 3, True, False, b"", 0),
            Publish(b"t/4", pattern(100_000), 0, 0, False, False, b"", 0),
        ),
        (),
    )
)
def test_the_same_messages_and_replies_as_stock_paho(scenario: Scenario) -> None:
    asyncio.run(compare(scenario))


def test_whole_publishes_are_taken_by_our_parser() -> None:
    # The property above compares paths; this checks it compares *ours*, not paho with paho.
    packets = tuple(
        Publish(f"s/{n}".encode(), pattern(n), n % 2, n + 1, False, n % 3 == 0, b"", 0)
        for n in range(50)
    )
    seen = asyncio.run(compare(Scenario(V311, packets, ())))
    assert len(seen.delivered) == 50
    # All but the first through on_publish_packet: paho's 1-byte read of the first packet's
    # type is what fills our buffer, so that packet is parsed by paho.
    assert seen.detail[1:].count(None) == 49


def test_taking_publishes_stops_when_the_driver_holds() -> None:
    """take_publishes hands whole packets in order and stops at once when `holding` is set
    (the source paused reading: ingest is full); the rest wait in the buffer, then follow."""
    client = FastClient(CallbackAPIVersion.VERSION2, client_id="hold-test", manual_ack=True)
    seen = Seen()

    def take(topic: str, payload: bytes, qos: int, mid: int, retain: bool) -> None:
        seen.on_publish_packet(topic, payload, qos, mid, retain)
        if mid == 2:
            client.holding = True

    client.on_publish_packet = take
    packets = [
        Publish(f"h/{n}".encode(), pattern(n), 1, n, False, False, b"", 0) for n in (1, 2, 3)
    ]
    whole = b"".join(p.encode() for p in packets)
    client._rbuf, client._rpos = whole + whole[:5], 0  # and the start of a fourth
    assert client.take_publishes() == 2
    client.holding = False
    assert client.take_publishes() == 1  # the fourth is not whole: it waits
    assert client.take_publish() is False
    assert seen.delivered == [(p.topic, p.payload, 1, p.mid, False) for p in packets]


async def wait_for_bytes(sock: socket.socket, wanted: bytes, what: str) -> None:
    """Poll the broker's side until the client wrote `wanted` (and nothing else)."""
    deadline, got = time.monotonic() + DEADLINE, b""
    while got != wanted:
        assert time.monotonic() < deadline, f"no {what} from the client (got {got!r})"
        await asyncio.sleep(0.02)
        got += received(sock)


async def test_keepalive_pings_and_drops_a_silent_broker() -> None:
    # paho's keepalive through our overrides and LoopDriver's loop_misc tick: a PINGREQ after
    # `keepalive` quiet seconds, the connection kept while PINGRESPs come, dropped when not.
    with listening() as (path, listener):
        ours = Ours(V311, path, listener, keepalive=1)
        lost = asyncio.get_running_loop().create_future()
        ours.client.on_disconnect = lambda *args: lost.done() or lost.set_result(args[3])
        try:
            await ours.pump()
            received(ours.broker)  # CONNECT
            await ours.feed(CONNACK[V311])
            await wait_for_bytes(ours.broker, b"\xc0\x00", "first PINGREQ")
            await ours.feed(b"\xd0\x00")  # PINGRESP
            assert not pinging(ours.client)
            await wait_for_bytes(ours.broker, b"\xc0\x00", "second PINGREQ")
            assert ours.client.is_connected() and not lost.done()
            reason = await asyncio.wait_for(lost, DEADLINE)  # no PINGRESP this time
            assert reason.is_failure
        finally:
            ours.close()


@given(st.lists(st.integers(1, 65535), max_size=600))
def test_pubacks_are_the_pubacks_in_order(mids: list[int]) -> None:
    assert pubacks(mids) == b"".join(puback(mid) for mid in mids)
