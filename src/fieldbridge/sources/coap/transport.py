"""A lean RFC 7252 server message layer for the Efento source (UDP, asyncio).

Hand-written on purpose: with a handler that answers at once, aiocoap's server Context
(message manager, token manager, exchange monitors, pktinfo addresses, a pipe per request) cost
about 180 µs of CPU per CON request (30,000 requests, 64 in flight, this 2-core machine), this
layer about 68 µs, both including aiocoap's Message.decode / Message.encode (~13 µs) and the UDP
system calls. aiocoap still parses and serialises every message; only the exchange
machinery is ours, and it does only what this server needs:

- a malformed CON is rejected with RST, a malformed NON ignored (§4.2, §4.3); so is a payload
  marker with no payload after it (a message format error, §3); an empty CON (CoAP ping) gets
  RST; an ACK or RST from a client only matters when it answers one of our separate
  responses, and is dropped otherwise;
- a CON request with a critical (odd-numbered) option the handler does not act on gets 4.02
  Bad Option naming it, and a NON one is rejected, i.e. ignored (§5.4.1);
- a CON request answered within `separate_after` seconds gets its answer piggy-backed in the
  ACK (same message id and token). One still unanswered then gets an empty ACK, so the client
  stops retransmitting, and its answer later comes as a separate CON response (§5.2.2) with a
  fresh message id and the request's token, retransmitted with exponential back-off
  (ACK_TIMEOUT, ACK_RANDOM_FACTOR, MAX_RETRANSMIT, §4.2, §4.8) until the client ACKs or RSTs
  it. aiocoap does the same after 0.1 s; no source says whether Efento firmware takes
  separate responses, hence a later default (1 s, still under the sensor's 2 s ACK_TIMEOUT).
  One timer serves all pending CONs: they fall due in arrival order, so it only ever waits
  for the oldest one, and an answer in time costs a dict insert and delete, no timer of its own;
- a NON request gets a NON answer with a fresh message id, unless the answer carries
  No-Response (RFC 7967) for its code class;
- deduplication (§4.5): a CON with a (remote, message id) seen within EXCHANGE_LIFETIME is
  ignored while nothing was sent for it, and answered with the same bytes after (the
  piggy-backed answer, or the empty ACK); a NON duplicate within NON_LIFETIME is ignored. The
  cache is bounded (`max_remembered`), oldest first out; so are the separate responses
  waiting for their ACK.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import random
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from fieldbridge.sources.coap.message import Message, decode, new_message

log = logging.getLogger("fieldbridge.coap")

EXCHANGE_LIFETIME = 247.0  # s, RFC 7252 §4.8.2: how long a CON's answer is kept for duplicates
NON_LIFETIME = 145.0  # s, RFC 7252 §4.8.2
MAX_REMEMBERED = 100_000  # default bound of (remote, mid) entries kept; the oldest go first
SEPARATE_AFTER = 1.0  # s, default wait for an answer before the empty ACK
ACK_TIMEOUT = 2.0  # s, RFC 7252 §4.8: default first wait for the ACK of a separate response
ACK_RANDOM_FACTOR = 1.5  # the first wait is ACK_TIMEOUT .. ACK_TIMEOUT * this
MAX_RETRANSMIT = 4  # retransmissions of a separate response before giving up
LOG_EVERY = 60.0  # s between log lines about separate responses given up

CON, NON, ACK, RST = 0, 1, 2, 3
BAD_OPTION = 0x82  # 4.02
INTERNAL_SERVER_ERROR = 0xA0  # 5.00
PAYLOAD_MARKER = 0xFF
# Critical options every request may carry: Uri-Host, Uri-Port (this server is the host they
# name), Uri-Path (routed on) and Uri-Query (ignored, as it always was).
URI_OPTIONS = frozenset({3, 7, 11, 15})

SockAddr = tuple[Any, ...]
Handler = Callable[["Pipe"], None]


class Remote:
    """A sender's address, with the two attributes the source reads of aiocoap's remotes."""

    __slots__ = ("sockaddr",)

    def __init__(self, sockaddr: SockAddr) -> None:
        self.sockaddr = sockaddr

    @property
    def hostinfo(self) -> str:
        host = str(self.sockaddr[0]).removeprefix("::ffff:")
        port = self.sockaddr[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def __repr__(self) -> str:
        return f"<Remote {self.hostinfo}>"


@dataclass(slots=True)
class Seen:
    """One (remote, message id) in the deduplication cache."""

    expires: float  # time.monotonic() after which it is forgotten
    answer: bytes | None = None  # CON only: what was sent for it, to send again for duplicates


@dataclass(slots=True, eq=False)
class Separate:
    """A separate CON response waiting for the client's ACK or RST."""

    wire: bytes
    addr: SockAddr
    timeout: float  # s until the next retransmission; doubles each time
    retransmits: int = 0
    timer: asyncio.TimerHandle | None = None


class Pipe:
    """One request and the way to its single answer (what the source used of aiocoap's pipe)."""

    __slots__ = (
        "_ends", "_server", "addr", "answered", "con", "due", "entry", "mid", "request",
        "separate",
    )  # fmt: skip

    def __init__(
        self, request: Message, server: CoapServer, entry: Seen, addr: SockAddr, mid: int, con: bool
    ) -> None:
        self.request = request
        self.addr = addr
        self.mid = mid
        self.con = con
        self.entry = entry
        self.due = 0.0  # CON: when the empty ACK goes out if still unanswered
        self.separate = False  # CON: the empty ACK went out; the answer goes as a CON
        self.answered = False
        self._server = server
        self._ends: list[Callable[[], object]] = []

    def add_response(self, message: Message, is_last: bool = True) -> None:
        """Send the answer; only one is sent (there are no observations here)."""
        if self.answered:
            return
        self.answered = True
        self._server.respond(self, message)

    def on_interest_end(self, callback: Callable[[], object]) -> None:
        """`callback` runs if the server closes before this request is answered."""
        self._ends.append(callback)

    def end_interest(self) -> None:
        ends, self._ends = self._ends, []
        for callback in ends:
            callback()


class CoapServer(asyncio.DatagramProtocol):
    """The UDP endpoint: datagrams in, requests to `handler`, answers out."""

    def __init__(
        self,
        handler: Handler,
        *,
        separate_after: float = SEPARATE_AFTER,
        max_remembered: int = MAX_REMEMBERED,
        ack_timeout: float = ACK_TIMEOUT,
        recognised: frozenset[int] = URI_OPTIONS,
    ) -> None:
        if separate_after <= 0 or ack_timeout <= 0 or max_remembered < 1:
            raise ValueError("separate_after and ack_timeout must be > 0 s, max_remembered >= 1")
        self._handler = handler
        self._recognised = recognised  # critical option numbers the handler acts on
        self._separate_after = separate_after
        self._ack_timeout = ack_timeout
        self._max_remembered = max_remembered
        self._transport: asyncio.DatagramTransport | None = None
        self._closed: asyncio.Future[None] | None = None
        self._seen: dict[tuple[SockAddr, int], Seen] = {}
        self._expiry: deque[tuple[float, tuple[SockAddr, int]]] = deque()
        self._pending: set[Pipe] = set()
        # CON requests with nothing sent yet, oldest first (insertion order is due order).
        self._unacked: dict[Pipe, None] = {}
        self._sweep: asyncio.TimerHandle | None = None
        # (remote, our message id) -> separate response waiting for its ACK, oldest first.
        self._separate: dict[tuple[SockAddr, int], Separate] = {}
        self._mid = int.from_bytes(os.urandom(2), "big")
        self._given_up = 0  # separate responses given up since the last log line
        self._logged_at = -LOG_EVERY

    @classmethod
    async def listen(
        cls,
        host: str,
        port: int,
        handler: Handler,
        *,
        separate_after: float = SEPARATE_AFTER,
        max_remembered: int = MAX_REMEMBERED,
        ack_timeout: float = ACK_TIMEOUT,
        recognised: frozenset[int] = URI_OPTIONS,
    ) -> CoapServer:
        """Bind host:port (IPv6 wildcards take IPv4 too); raises OSError. `recognised`: the
        critical option numbers the handler acts on (requests with others get 4.02)."""
        server = cls(
            handler,
            separate_after=separate_after,
            max_remembered=max_remembered,
            ack_timeout=ack_timeout,
            recognised=recognised,
        )
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        if not infos:
            raise OSError(f"no address for {host!r}")
        family, _, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, socket.SOCK_DGRAM, proto)
        try:
            if family == socket.AF_INET6 and ipaddress.ip_address(sockaddr[0]).is_unspecified:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(sockaddr)
        except OSError:
            sock.close()
            raise
        await loop.create_datagram_endpoint(lambda: server, sock=sock)
        return server

    @property
    def sockname(self) -> Any:
        return self._transport.get_extra_info("sockname") if self._transport else None

    @property
    def awaiting_ack(self) -> int:
        """Separate responses sent and not yet acknowledged (nor given up)."""
        return len(self._separate)

    # --- asyncio protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)
        self._closed = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self._unacked.clear()
        for separate in self._separate.values():
            if separate.timer is not None:
                separate.timer.cancel()
        self._separate.clear()
        for pipe in list(self._pending):
            pipe.end_interest()
        self._pending.clear()

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP error: %s", exc)  # e.g. ICMP port unreachable for an earlier answer

    def datagram_received(self, data: bytes, addr: SockAddr) -> None:
        if len(data) < 4 or data[0] >> 6 != 1:
            return  # too short to answer, or another version: silently ignored (§3)
        mtype = (data[0] >> 4) & 3
        if mtype >= ACK:
            if self._separate:  # the client's ACK or RST of a separate response ends it
                self._settle((addr, int.from_bytes(data[2:4], "big")))
            return
        code = data[1]
        if code == 0 or code >> 5 or data[0] & 15 > 8:
            # An empty CON (ping), a response, a reserved class or a bad token length: RST
            # for a CON, nothing for a NON (§4.2, §4.3).
            if mtype == CON:
                self._reset(data, addr)
            return
        mid = int.from_bytes(data[2:4], "big")
        key = (addr, mid)
        now = time.monotonic()
        entry = self._seen.get(key)
        if entry is not None and entry.expires > now:
            if mtype == CON and entry.answer is not None and self._transport is not None:
                self._transport.sendto(entry.answer, addr)  # the answer (or empty ACK), again
            return  # a duplicate: nothing sent for it yet, or a NON
        try:
            request = decode(data, Remote(addr))
        except Exception:  # aiocoap raises several kinds for broken options
            if mtype == CON:
                self._reset(data, addr)
            return
        if data[-1] == PAYLOAD_MARKER and not request.payload and _marker_ends(data):
            # aiocoap takes a marker with nothing after it as no payload; §3: a format error.
            if mtype == CON:
                self._reset(data, addr)
            return
        unknown = [
            o.number
            for o in request.opt.option_list()
            if o.number & 1 and o.number not in self._recognised
        ]
        if unknown and mtype == NON:
            return  # §5.4.1: a NON with an unknown critical option is rejected (§4.3)
        self._expire(now)
        entry = Seen(now + (EXCHANGE_LIFETIME if mtype == CON else NON_LIFETIME))
        self._seen[key] = entry
        self._expiry.append((entry.expires, key))
        pipe = Pipe(request, self, entry, addr, mid, mtype == CON)
        self._pending.add(pipe)
        if unknown:
            numbers = ", ".join(str(int(n)) for n in dict.fromkeys(unknown))
            pipe.add_response(
                new_message(BAD_OPTION, f"unknown critical option {numbers}".encode())
            )
            return
        try:
            self._handler(pipe)
        except Exception:  # a bug: the sensor still gets an answer, and the log says why
            log.exception("CoAP request from %s failed", request.remote)
            pipe.add_response(new_message(INTERNAL_SERVER_ERROR))
        if pipe.con and not pipe.answered:
            # The answer waits (a commit): an empty ACK goes out if it is not there in time.
            pipe.due = now + self._separate_after
            self._unacked[pipe] = None
            if self._sweep is None:
                self._sweep = asyncio.get_running_loop().call_later(
                    self._separate_after, self._send_empty_acks
                )

    # --- sending ----------------------------------------------------------------------------

    def respond(self, pipe: Pipe, message: Message) -> None:
        """Send `message` as the answer to `pipe.request`: piggy-backed in the ACK of a CON, as
        a separate CON after an empty ACK, or as a NON."""
        self._pending.discard(pipe)
        con = pipe.con
        if con and not pipe.separate:
            self._unacked.pop(pipe, None)
        no_response = message.opt.no_response
        if no_response is not None:
            message.opt.no_response = None  # a server-side instruction, not for the wire
            if no_response & (1 << ((message.code >> 5) - 1)):
                if con and not pipe.separate:  # the CON still needs its ACK: an empty one
                    self._send_empty_ack(pipe)
                return
        message.token = pipe.request.token
        if not con:
            message.mtype = NON
            message.mid = self._next_mid()
            self._sendto(message.encode(), pipe.addr)
        elif not pipe.separate:
            message.mtype = ACK
            message.mid = pipe.mid
            wire = message.encode()
            pipe.entry.answer = wire  # retransmissions of the request get the same bytes
            self._sendto(wire, pipe.addr)
        else:
            self._send_separate(message, pipe.addr)

    def _send_empty_acks(self) -> None:
        """The timer: an empty ACK for each CON due and unanswered; re-armed for the next."""
        self._sweep = None
        unacked = self._unacked
        now = time.monotonic()
        while unacked:
            pipe = next(iter(unacked))
            if pipe.due > now:
                self._sweep = asyncio.get_running_loop().call_later(
                    pipe.due - now, self._send_empty_acks
                )
                return
            del unacked[pipe]
            pipe.separate = True
            self._send_empty_ack(pipe)
            log.debug("CoAP: empty ACK to %s mid %d; the answer follows", pipe.addr, pipe.mid)

    def _send_empty_ack(self, pipe: Pipe) -> None:
        wire = b"\x60\x00" + pipe.mid.to_bytes(2, "big")
        pipe.entry.answer = wire
        self._sendto(wire, pipe.addr)

    def _send_separate(self, message: Message, addr: SockAddr) -> None:
        """Send a separate CON response and retransmit it until it is ACKed or RST (§4.2)."""
        if self._transport is None or self._transport.is_closing():
            return  # closed: the sensor sends its data again later
        mid = self._next_mid()
        while (addr, mid) in self._separate:  # still waiting under this id: take another
            mid = self._next_mid()
        message.mtype = CON
        message.mid = mid
        if len(self._separate) >= self._max_remembered:  # the oldest one is given up
            oldest_key = next(iter(self._separate))
            self._give_up(oldest_key, self._separate[oldest_key])
        timeout = self._ack_timeout * random.uniform(1.0, ACK_RANDOM_FACTOR)
        separate = Separate(message.encode(), addr, timeout)
        key = (addr, mid)
        self._separate[key] = separate
        self._sendto(separate.wire, addr)
        separate.timer = asyncio.get_running_loop().call_later(timeout, self._retransmit, key)

    def _retransmit(self, key: tuple[SockAddr, int]) -> None:
        separate = self._separate.get(key)
        if separate is None:
            return
        if separate.retransmits >= MAX_RETRANSMIT:
            self._give_up(key, separate)
            return
        separate.retransmits += 1
        separate.timeout *= 2
        self._sendto(separate.wire, separate.addr)
        separate.timer = asyncio.get_running_loop().call_later(
            separate.timeout, self._retransmit, key
        )

    def _settle(self, key: tuple[SockAddr, int]) -> None:
        """The client ACKed or RST a separate response: stop retransmitting it."""
        separate = self._separate.pop(key, None)
        if separate is not None and separate.timer is not None:
            separate.timer.cancel()

    def _give_up(self, key: tuple[SockAddr, int], separate: Separate) -> None:
        del self._separate[key]
        if separate.timer is not None:
            separate.timer.cancel()
        self._given_up += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY:
            log.warning(
                "CoAP: %d separate response(s) never acknowledged (the last to %s after %d "
                "retransmissions); the sensor sends its data again later",
                self._given_up, Remote(separate.addr).hostinfo, separate.retransmits,
            )  # fmt: skip
            self._given_up = 0
            self._logged_at = now

    def _next_mid(self) -> int:
        self._mid = (self._mid + 1) & 0xFFFF
        return self._mid

    def _sendto(self, wire: bytes, addr: SockAddr) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(wire, addr)

    def _reset(self, data: bytes, addr: SockAddr) -> None:
        if self._transport is not None:
            self._transport.sendto(b"\x70\x00" + data[2:4], addr)

    def _expire(self, now: float) -> None:
        """Forget expired (remote, mid) entries, and the oldest beyond `max_remembered`."""
        expiry, seen, bound = self._expiry, self._seen, self._max_remembered
        while expiry and (expiry[0][0] <= now or len(expiry) >= bound):
            expires, key = expiry.popleft()
            entry = seen.get(key)
            if entry is not None and entry.expires == expires:
                del seen[key]

    async def close(self) -> None:
        """Close the socket; requests still unanswered see their interest end, and separate
        responses not yet acknowledged are no longer retransmitted."""
        if self._transport is None:
            return
        self._transport.close()
        if self._closed is not None:
            await self._closed


def _marker_ends(data: bytes) -> bool:
    """Whether the payload marker is the datagram's last byte: the options are walked to find
    where they end, since a 0xFF may also end an option value (RFC 7252 §3.1)."""
    pos, end = 4 + (data[0] & 15), len(data)
    while pos < end:
        header = data[pos]
        if header == PAYLOAD_MARKER:
            return pos == end - 1
        delta, length = header >> 4, header & 15
        pos += 1 + {13: 1, 14: 2}.get(delta, 0)
        if length == 13:
            length = data[pos] + 13
            pos += 1
        elif length == 14:
            length = int.from_bytes(data[pos : pos + 2], "big") + 269
            pos += 2
        pos += length
    return False
