"""The Efento CoAP source: /m, /i, /c committed before their 2.01; /t answered with the clock."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import aiocoap
from aiocoap.numbers.codes import Code

from fieldbridge.codecs import efento
from fieldbridge.codecs.efento import FrameSummary, Incomplete, Part, Refused, summary
from fieldbridge.errors import ConfigError, DecodeError, StoreError
from fieldbridge.model import Accepted, Outcome, Rejected
from fieldbridge.sources.access import StoreAccess
from fieldbridge.sources.coap.downlinks import DownlinkPlanner, Later
from fieldbridge.sources.coap.message import Address, Message, new_message
from fieldbridge.sources.coap.settings import EfentoCoapSettings, parse_listen
from fieldbridge.sources.coap.tokens import TOKEN_ATTRIBUTE, TokenPolicy
from fieldbridge.sources.coap.transport import URI_OPTIONS, CoapServer, Pipe
from fieldbridge.sources.coap.uploads import ConfigUploads, refusing

if TYPE_CHECKING:
    from fieldbridge.ingest import Ingest

log = logging.getLogger("fieldbridge.sources.efento")

NO_RESPONSE = 26  # RFC 7967: suppress 2.xx, 4.xx and 5.xx, i.e. answer nothing to a NON
LOG_EVERY = 60.0  # seconds between repeats of one refusal or failure in the log
EXPIRE_EVERY = 30.0  # at most this many seconds between looks for split uploads too old


@dataclass(slots=True)
class _Frame:
    """One /m, /i or /c request on its way through ingest to its answer."""

    pipe: Pipe
    endpoint: str
    con: bool
    payload: bytes
    received_at: float
    remote: str
    summary: FrameSummary | None  # None: the payload does not decode
    meta: dict[str, Any] = field(default_factory=dict)
    done: bool = False  # answered, or given up


class EfentoCoapSource:
    """One [[sources.efento]]: a CoAP server for Efento NB-IoT sensors.

    The message layer (transport.py) hands every request to `handle`: routing four fixed
    paths needs no Site tree, and no blockwise assembly (a sensor splits large configurations
    itself, field 44). Answers should be fast: each waits for one ingest commit and, only for
    devices with downlinks or an unknown hash, a store look-up or transaction. One later than
    `separate_after` goes as a separate response after an empty ACK (transport.py).

    What a frame is (serial, hash, token, split part) comes from the codec; the token policy,
    the split-upload assembly and the downlink planner decide; this class answers.
    """

    def __init__(self, settings: EfentoCoapSettings, ingest: Ingest, access: StoreAccess) -> None:
        self.name = settings.name
        self.settings = settings
        self._ingest = ingest
        self._where = settings.where
        self._routes = settings.routes()
        self._tokens = (
            TokenPolicy([t.get_secret_value() for t in settings.tokens], access.devices)
            if settings.tokens_required
            else None
        )
        self._token_option = settings.token_option
        self.planner = DownlinkPlanner(
            access.downlinks,
            access.devices,
            where=self._where,
            poll=settings.downlink_poll,
            attempts=settings.downlink_attempts,
            config_request=settings.config_request,
        )
        self._uploads = ConfigUploads(access.journal, settings)
        self._expiry: asyncio.Task[None] | None = None
        self._logged: dict[str, float] = {}  # what was logged when, for rate limiting
        self._server: CoapServer | None = None
        self._outstanding = 0
        self._drained = asyncio.Event()
        self._closing = False
        self.address: tuple[str, int] | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> EfentoCoapSource:
        host, port = parse_listen(self.settings.listen)
        try:
            await self.planner.refresh()
        except StoreError as exc:
            log.warning("%s: downlink queue not readable yet: %s", self._where, exc)
        try:
            self._server = await CoapServer.listen(
                host,
                port,
                self.handle,
                separate_after=self.settings.separate_after,
                recognised=self._recognised_options(),
            )
        except OSError as exc:
            raise ConfigError(
                f"{self._where}.listen {self.settings.listen}: cannot listen on UDP: {exc}"
            ) from exc
        await self.planner.start()
        self._expiry = asyncio.create_task(self._expire_uploads(), name="efento-split-expiry")
        self.address = (host, port)
        paths = ", ".join("/" + "/".join(p) for p, e in self._routes.items() if e == "m")
        log.info(
            "%s: CoAP on udp %s (measurements at %s; tokens %s)",
            self._where,
            self.settings.listen,
            paths,
            "required" if self._tokens is not None else "not checked",
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop taking frames, answer those handed to ingest, close the socket."""
        self._closing = True
        while self._outstanding:
            self._drained.clear()
            await self._drained.wait()
        await self.planner.stop()
        if self._expiry is not None:
            self._expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry
        if self._server is not None:
            await self._server.close()
        log.info("%s: stopped", self._where)

    @property
    def split_uploads_held(self) -> tuple[int, int]:
        """(sensors, bytes) of unfinished split /c uploads in memory."""
        return self._uploads.held

    def _recognised_options(self) -> frozenset[int]:
        """Critical options this source acts on; others get 4.02 (RFC 7252 §5.4.1)."""
        if self._token_option is None:
            return URI_OPTIONS
        return URI_OPTIONS | {self._token_option}

    async def _expire_uploads(self) -> None:
        """Forget split uploads older than split_timeout, on a timer: a sensor that never
        sends its last part must not hold memory until it sends again."""
        every = min(max(self.settings.split_timeout / 4, 0.05), EXPIRE_EVERY)
        while True:
            await asyncio.sleep(every)
            expired = self._uploads.expire(time.time())
            if expired:
                log.info(
                    "%s: %d unfinished split configuration upload(s) older than split_timeout "
                    "(%gs) forgotten",
                    self._where, expired, self.settings.split_timeout,
                )  # fmt: skip

    # --- requests ---------------------------------------------------------------------------

    def handle(self, pipe: Pipe) -> None:
        """Take one request; answer it now or once its frame is committed."""
        request = pipe.request
        frame: _Frame | None = None
        try:
            answer = self._answer_at_once(request)
            if answer is not None:
                pipe.add_response(answer, is_last=True)
                return
            frame = self._frame(pipe, request)
            self._outstanding += 1
            split = frame.endpoint == "c" and frame.summary and frame.summary.split_info
            if self._tokens is not None or split or not self._ingest.has_room:
                # Store look-ups or back-pressure first: that takes a task.
                self._spawn(frame, self._store_frame(frame))
                return
            self._offer(frame)
        except Exception:  # a bug must still answer the sensor, and be seen
            log.exception("%s: request failed", self._where)
            if frame is None:
                pipe.add_response(new_message(Code.INTERNAL_SERVER_ERROR), is_last=True)
            else:
                self._answer(frame, Code.INTERNAL_SERVER_ERROR, b"")

    def _spawn(self, frame: _Frame, work: Coroutine[Any, Any, None]) -> None:
        """Finish a frame in a task; it is cancelled if the socket closes first."""
        task = asyncio.create_task(work, name="efento-frame")
        frame.pipe.on_interest_end(task.cancel)
        task.add_done_callback(lambda _: self._forget(frame))

    def _answer_at_once(self, request: Message) -> Message | None:
        """The answer to anything but a frame to store: /t, wrong paths and methods."""
        endpoint = self._routes.get(tuple(request.opt.uri_path))
        con = request.mtype == aiocoap.CON
        code = request.code
        if endpoint is None:
            return _reply(con, Code.NOT_FOUND)
        if endpoint == "t":
            if code not in (Code.GET, Code.POST):
                return _reply(con, Code.METHOD_NOT_ALLOWED)
            # Always answered, NON too: the sensor asked for the time and waits for it.
            return new_message(Code.CONTENT, struct.pack(">I", int(time.time())))
        if code != Code.POST:
            return _reply(con, Code.METHOD_NOT_ALLOWED)
        if self._closing:
            return _reply(con, Code.SERVICE_UNAVAILABLE, b"shutting down, retry")
        return None

    def _frame(self, pipe: Pipe, request: Message) -> _Frame:
        endpoint = self._routes[tuple(request.opt.uri_path)]
        con = request.mtype == aiocoap.CON
        payload: bytes = request.payload
        remote = _remote(request.remote)
        try:
            frame: FrameSummary | None = summary(endpoint, payload)
        except DecodeError:
            frame = None  # ingest rejects it again, with the reason, into quarantine
        meta = {"endpoint": endpoint, "remote": remote, "type": "CON" if con else "NON"}
        return _Frame(pipe, endpoint, con, payload, time.time(), remote, frame, meta)

    def _offer(self, frame: _Frame) -> None:
        """Hand a frame to ingest; its answer is sent from the commit callback."""
        try:
            future = self._ingest.offer(
                self.name, frame.payload, efento.decode, frame.meta, frame.received_at
            )
        except StoreError as exc:  # shutting down
            self._answer(frame, *self._store_failed(exc))
            return
        future.add_done_callback(partial(self._committed, frame))

    def _committed(self, frame: _Frame, future: asyncio.Future[Outcome]) -> None:
        try:
            code, diagnostic = self._outcome(frame, future.result())
        except StoreError as exc:
            self._answer(frame, *self._store_failed(exc))
            return
        except asyncio.CancelledError:
            self._answer(frame, Code.SERVICE_UNAVAILABLE, b"shutting down, retry")
            return
        if code != Code.CREATED or frame.summary is None:
            self._answer(frame, code, diagnostic)
            return
        s = frame.summary
        now = frame.received_at
        payload = self.planner.settle_now(
            frame.endpoint, s.serial, s.configuration_hash, frame.con, now
        )
        if isinstance(payload, Later):
            self._spawn(frame, self._settle(frame))
            return
        self._answer(frame, Code.CREATED, payload or b"")

    async def _store_frame(self, frame: _Frame) -> None:
        """The slow path: token check, split /c reassembly, waiting for room in ingest."""
        try:
            if self._tokens is not None:
                refusal = await self._refusal(self._tokens, frame)
                if refusal is not None:
                    self._answer(frame, Code.UNAUTHORIZED, refusal.encode())
                    return
            whole: bool | Refused = True  # for /c: a whole configuration, not a part
            s = frame.summary
            if frame.endpoint == "c" and s is not None and s.split_info:
                whole = await self._config_upload(frame, s)
            if isinstance(whole, Refused):
                assert s is not None
                await self._refuse_part(frame, self._uploads.reason(s.serial, whole))
                return
            try:
                outcome = await self._ingest.submit(
                    self.name, frame.payload, efento.decode, frame.meta, frame.received_at
                )
            except StoreError as exc:
                self._answer(frame, *self._store_failed(exc))
                return
            code, diagnostic = self._outcome(frame, outcome)
            if code != Code.CREATED or frame.summary is None:
                self._answer(frame, code, diagnostic)
            elif not whole:  # a part of a split /c: nothing to follow up yet
                self._answer(frame, Code.CREATED, b"")
            else:
                await self._settle(frame)
        except Exception:
            log.exception("%s: frame from %s failed", self._where, frame.remote)
            self._answer(frame, Code.INTERNAL_SERVER_ERROR, b"")

    async def _settle(self, frame: _Frame) -> None:
        """Follow-ups that need the store, then the 2.01 (with its downlink payload)."""
        s = frame.summary
        assert s is not None
        try:
            payload = await self.planner.settle(
                frame.endpoint, s.serial, s.configuration_hash, frame.con, frame.received_at
            )
        except StoreError as exc:
            # The frame is committed: acknowledge it; downlinks wait for the next frame.
            self._log_limited(
                "downlinks", logging.WARNING, "%s: downlinks of %s skipped: %s",
                self._where, s.serial, exc,
            )  # fmt: skip
            payload = None
        self._answer(frame, Code.CREATED, payload or b"")

    def _outcome(self, frame: _Frame, outcome: Outcome) -> tuple[Code, bytes]:
        if isinstance(outcome, Accepted):
            return Code.CREATED, b""
        log.info(
            "%s: /%s frame from %s quarantined (id %d): %s",
            self._where, frame.endpoint, frame.remote, outcome.quarantine_id, outcome.reason,
        )  # fmt: skip
        return Code.BAD_REQUEST, outcome.reason.encode()[:200]

    def _store_failed(self, exc: StoreError) -> tuple[Code, bytes]:
        self._log_limited(
            "store", logging.WARNING, "%s: store failed; answering 5.00 so sensors retry: %s",
            self._where, exc,
        )  # fmt: skip
        return Code.INTERNAL_SERVER_ERROR, b"store unavailable, retry"

    def _answer(self, frame: _Frame, code: Code, payload: bytes) -> None:
        """Send a frame's answer (not on the wire for NON) and count it done, once."""
        if not frame.done:
            self._forget(frame)
            frame.pipe.add_response(_reply(frame.con, code, payload), is_last=True)

    def _forget(self, frame: _Frame) -> None:
        """Count a frame done (answered, or its exchange dropped)."""
        if frame.done:
            return
        frame.done = True
        self._outstanding -= 1
        if not self._outstanding:
            self._drained.set()

    async def _config_upload(self, frame: _Frame, s: FrameSummary) -> bool | Refused:
        """A part of a split /c: on the last part, make the frame the whole configuration.

        Returns whether the frame is a whole configuration now (else a part, stored alone),
        or why the part is refused.
        """
        step = await self._uploads.take(s, frame.payload, frame.received_at)
        if isinstance(step, Part):
            return False
        if isinstance(step, Refused):
            return step
        if isinstance(step, Incomplete):
            log.warning(
                "%s: split configuration of %s: parts %s of %d missing; storing the last part "
                "alone and asking the sensor for its configuration again",
                self._where, s.serial, list(step.missing), s.split_info,
            )  # fmt: skip
            self.planner.configuration_incomplete(s.serial)
            return False
        frame.payload, frame.summary = step.payload, step.frame
        if step.parts > 1:
            frame.meta["split_parts"] = step.parts
        return True

    async def _refuse_part(self, frame: _Frame, reason: str) -> None:
        """A split /c part over a limit: quarantined with the reason, answered 4.13."""
        try:
            outcome = await self._ingest.submit(
                self.name, frame.payload, refusing(reason), frame.meta, frame.received_at
            )
        except StoreError as exc:
            self._answer(frame, *self._store_failed(exc))
            return
        serial = frame.summary.serial if frame.summary is not None else "?"
        where = f"id {outcome.quarantine_id}" if isinstance(outcome, Rejected) else "stored"
        self._log_limited(
            f"split:{serial}", logging.WARNING, "%s: /c part from %s quarantined (%s): %s",
            self._where, frame.remote, where, reason,
        )  # fmt: skip
        self._answer(frame, Code.REQUEST_ENTITY_TOO_LARGE, reason.encode()[:200])

    # --- cloud tokens -------------------------------------------------------------------------

    async def _refusal(self, tokens: TokenPolicy, frame: _Frame) -> str | None:
        """None if the frame may be stored, else why not (the 4.01's diagnostic payload)."""
        s = frame.summary
        if self._token_option is not None:
            token = self._option_token(frame.pipe.request, self._token_option)
        else:
            token = s.cloud_token if s is not None else None
        serial = s.serial if s is not None else None
        reason = await tokens.refusal(serial, token)
        if reason is not None:
            self._log_limited(
                f"token:{serial or '?'}:{reason}", logging.WARNING,
                "%s: refused /%s from %s (serial %s): %s; add it to %s.tokens or set the "
                "device's %s attribute", self._where, frame.endpoint, frame.remote,
                serial or "?", reason, self._where, TOKEN_ATTRIBUTE,
            )  # fmt: skip
        return reason

    @staticmethod
    def _option_token(request: Message, option: int) -> str | None:
        """The token a sensor sends in a CoAP option (cloud_token_coap_option 1..64999)."""
        options = request.opt.get_option(option)
        if not options:
            return None
        value = options[0].value
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        return text or None

    def _log_limited(self, key: str, level: int, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._logged.get(key, -LOG_EVERY) >= LOG_EVERY:
            self._logged[key] = now
            if len(self._logged) > 10_000:
                self._logged.clear()
            log.log(level, message, *args)


def _remote(address: Address) -> str:
    """host:port of a sender, cheaply: aiocoap's hostinfo parses the address every time."""
    sockaddr = getattr(address, "sockaddr", None)
    if not sockaddr:
        return str(address.hostinfo)
    host = sockaddr[0].removeprefix("::ffff:")
    return f"[{host}]:{sockaddr[1]}" if ":" in host else f"{host}:{sockaddr[1]}"


def _reply(con: bool, code: Code, payload: bytes = b"") -> Message:
    return new_message(code, payload, no_response=None if con else NO_RESPONSE)
