"""The Efento CoAP source: /m, /i, /c committed before their 2.01; /t answered with the clock."""

from __future__ import annotations

import asyncio
import hmac
import logging
import struct
import time
from typing import TYPE_CHECKING, Any

import aiocoap
from aiocoap.numbers.codes import Code

from fieldbridge.codecs import efento
from fieldbridge.codecs.efento import FrameSummary, summary
from fieldbridge.errors import ConfigError, DecodeError, StoreError
from fieldbridge.model import Accepted
from fieldbridge.sources.coap.downlinks import DownlinkPlanner
from fieldbridge.sources.coap.settings import EfentoCoapSettings, parse_listen
from fieldbridge.sources.coap.splits import ConfigParts, assemble, missing

if TYPE_CHECKING:
    from fieldbridge.ingest import Ingest

log = logging.getLogger("fieldbridge.sources.efento")

NO_RESPONSE = 26  # RFC 7967: suppress 2.xx, 4.xx and 5.xx, i.e. answer nothing to a NON
TOKEN_TTL = 30.0  # seconds a device's allowed_cloud_token is trusted before a re-read
LOG_EVERY = 60.0  # seconds between repeats of one refusal or failure in the log
TOKEN_ATTRIBUTE = "allowed_cloud_token"


class EfentoCoapSource:
    """One [[sources.efento]]: a CoAP server for Efento NB-IoT sensors.

    aiocoap hands every request to `render_to_pipe` (this object is the server "site"):
    routing four fixed paths needs no Site tree, and no blockwise assembly (a sensor splits
    large configurations itself, field 44). CON requests are answered piggy-backed, so the
    handler must finish within aiocoap's EMPTY_ACK_DELAY (0.1 s): it waits for one ingest
    commit and, only for devices with downlinks, one store transaction.
    """

    def __init__(self, settings: EfentoCoapSettings, ingest: Ingest) -> None:
        self.name = settings.name
        self.settings = settings
        self._ingest = ingest
        self._where = settings.where
        self._routes = settings.routes()
        self._tokens = [t.get_secret_value().encode() for t in settings.tokens]
        self._require_token = settings.tokens_required
        self._token_option = settings.token_option
        self.planner = DownlinkPlanner(
            ingest.store,
            where=self._where,
            poll=settings.downlink_poll,
            attempts=settings.downlink_attempts,
            config_request=settings.config_request,
        )
        self._parts = ConfigParts(settings.split_timeout)
        self._allowed: dict[str, tuple[str | None, float]] = {}  # serial -> token, read at
        self._logged: dict[str, float] = {}  # what was logged when, for rate limiting
        self._context: Any = None
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
            self._context = await aiocoap.Context.create_server_context(
                self, bind=(host, port), transports=["udp6"], loggername="fieldbridge.coap"
            )
        except OSError as exc:
            raise ConfigError(
                f"{self._where}.listen {self.settings.listen}: cannot listen on UDP: {exc}"
            ) from exc
        await self.planner.start()
        self.address = (host, port)
        paths = ", ".join("/" + "/".join(p) for p, e in self._routes.items() if e == "m")
        log.info(
            "%s: CoAP on udp %s (measurements at %s; tokens %s)",
            self._where,
            self.settings.listen,
            paths,
            "required" if self._require_token else "not checked",
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop taking frames, answer those handed to ingest, close the socket."""
        self._closing = True
        while self._outstanding:
            self._drained.clear()
            await self._drained.wait()
        await self.planner.stop()
        if self._context is not None:
            await self._context.shutdown()
        log.info("%s: stopped", self._where)

    # --- aiocoap's server-site interface ------------------------------------------------------

    async def render_to_pipe(self, pipe: Any) -> None:
        request = pipe.request
        self._outstanding += 1
        try:
            response = await self.respond(request)
        finally:
            self._outstanding -= 1
            if not self._outstanding:
                self._drained.set()
        pipe.add_response(response, is_last=True)

    async def respond(self, request: Any) -> aiocoap.Message:
        """The answer to one request (for NON data requests, an answer that is not sent)."""
        endpoint = self._routes.get(tuple(request.opt.uri_path))
        con = request.mtype == aiocoap.CON
        code = request.code
        if endpoint is None:
            return _reply(con, Code.NOT_FOUND)
        if endpoint == "t":
            if code not in (Code.GET, Code.POST):
                return _reply(con, Code.METHOD_NOT_ALLOWED)
            # Always answered, NON too: the sensor asked for the time and waits for it.
            return aiocoap.Message(code=Code.CONTENT, payload=struct.pack(">I", int(time.time())))
        if code != Code.POST:
            return _reply(con, Code.METHOD_NOT_ALLOWED)
        if self._closing:
            return _reply(con, Code.SERVICE_UNAVAILABLE, b"shutting down, retry")
        answer_code, payload = await self._frame(endpoint, request, con)
        return _reply(con, answer_code, payload)

    # --- frames -------------------------------------------------------------------------------

    async def _frame(self, endpoint: str, request: Any, con: bool) -> tuple[Code, bytes]:
        payload: bytes = request.payload
        received_at = time.time()
        remote = request.remote.hostinfo
        try:
            frame: FrameSummary | None = summary(endpoint, payload)
        except DecodeError:
            frame = None  # ingest rejects it again, with the reason, into quarantine
        if self._require_token:
            refusal = await self._check_token(endpoint, request, frame, remote)
            if refusal is not None:
                return Code.UNAUTHORIZED, refusal.encode()
        meta = {"endpoint": endpoint, "remote": remote, "type": "CON" if con else "NON"}
        whole = True  # for /c: a whole configuration, not a part of a split upload
        if endpoint == "c" and frame is not None and frame.split_info:
            payload, frame, whole = await self._config_upload(frame, payload, meta, received_at)
        try:
            outcome = await self._ingest.submit(
                self.name, payload, efento.decode, meta, received_at
            )
        except StoreError as exc:
            self._log_limited(
                "store", logging.WARNING, "%s: store failed; answering 5.00 so sensors retry: %s",
                self._where, exc,
            )  # fmt: skip
            return Code.INTERNAL_SERVER_ERROR, b"store unavailable, retry"
        if not isinstance(outcome, Accepted):
            log.info(
                "%s: /%s frame from %s quarantined (id %d): %s",
                self._where, endpoint, remote, outcome.quarantine_id, outcome.reason,
            )  # fmt: skip
            return Code.BAD_REQUEST, outcome.reason.encode()[:200]
        if frame is None:  # cannot happen: the codec accepted what summary refused
            return Code.CREATED, b""
        return Code.CREATED, await self._after_commit(endpoint, frame, con, whole, received_at)

    async def _after_commit(
        self, endpoint: str, frame: FrameSummary, con: bool, whole: bool, now: float
    ) -> bytes:
        """Follow-ups of a committed frame, and the downlink payload of its 2.01."""
        try:
            if endpoint == "c":
                if whole and frame.configuration_hash is not None:
                    await self.planner.configuration_stored(
                        frame.serial, frame.configuration_hash, now
                    )
                return b""
            if endpoint == "i":
                await self.planner.device_info_stored(frame.serial, now)
            if not con:
                return b""
            hash_ = frame.configuration_hash if endpoint == "m" else None
            return await self.planner.answer(frame.serial, hash_, now) or b""
        except StoreError as exc:
            # The frame is committed: acknowledge it; downlinks wait for the next frame.
            self._log_limited(
                "downlinks", logging.WARNING, "%s: downlinks of %s skipped: %s",
                self._where, frame.serial, exc,
            )  # fmt: skip
            return b""

    async def _config_upload(
        self, frame: FrameSummary, payload: bytes, meta: dict[str, Any], now: float
    ) -> tuple[bytes, FrameSummary, bool]:
        """A part of a split /c: keep it; on the last part, the whole configuration to store.

        Returns (payload to store, its summary, whether it is a whole configuration).
        """
        split = frame.split_info or 0
        serial = frame.serial
        if split < 0:
            self._parts.add(serial, -split, payload, now)
            return payload, frame, False
        if split == 1:
            return payload, frame, True
        parts = self._parts.earlier(serial, split, now)
        if missing(parts, split):
            parts = {**await self._parts_from_journal(serial, split, now), **parts}
        whole = assemble(parts, payload, split)
        if whole is None:
            log.warning(
                "%s: split configuration of %s: parts %s of %d missing; storing the last part "
                "alone and asking the sensor for its configuration again",
                self._where, serial, missing(parts, split), split,
            )  # fmt: skip
            self.planner.configuration_incomplete(serial)
            return payload, frame, False
        self._parts.forget(serial)
        meta["split_parts"] = split
        return whole, summary("c", whole), True

    async def _parts_from_journal(self, serial: str, total: int, now: float) -> dict[int, bytes]:
        """Earlier parts this source stored, for an upload that began before a restart."""
        try:
            entries = await self._ingest.store.recent_messages(
                serial,
                since=now - self.settings.split_timeout,
                kind=efento.KIND_CONFIG_PART,
                source=self.name,
                limit=4 * total,
            )
        except StoreError:
            return {}
        found: dict[int, bytes] = {}
        for entry in entries:  # newest first: the current upload wins over older ones
            try:
                index = -(summary("c", entry.payload).split_info or 0)
            except DecodeError:
                continue
            if 1 <= index < total:
                found.setdefault(index, entry.payload)
        return found

    # --- cloud tokens -------------------------------------------------------------------------

    async def _check_token(
        self, endpoint: str, request: Any, frame: FrameSummary | None, remote: str
    ) -> str | None:
        """None if the frame may be stored, else why not (the 4.01's diagnostic payload)."""
        token = self._option_token(request) if self._token_option else None
        if self._token_option is None and frame is not None:
            token = frame.cloud_token
        serial = frame.serial if frame is not None else "?"
        if token is not None and await self._token_allowed(serial, token):
            return None
        reason = "no cloud token" if token is None else "unknown cloud token"
        self._log_limited(
            f"token:{serial}:{reason}", logging.WARNING,
            "%s: refused /%s from %s (serial %s): %s; add it to %s.tokens or set the device's "
            "%s attribute", self._where, endpoint, remote, serial, reason, self._where,
            TOKEN_ATTRIBUTE,
        )  # fmt: skip
        return reason

    def _option_token(self, request: Any) -> str | None:
        options = request.opt.get_option(self._token_option)
        if not options:
            return None
        value = options[0].value
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        return text or None

    async def _token_allowed(self, serial: str, token: str) -> bool:
        given = token.encode()
        if any(hmac.compare_digest(given, t) for t in self._tokens):
            return True
        if serial == "?":
            return False
        allowed = await self._registered_token(serial)
        return allowed is not None and hmac.compare_digest(given, allowed.encode())

    async def _registered_token(self, serial: str) -> str | None:
        now = time.monotonic()
        cached = self._allowed.get(serial)
        if cached is not None and now - cached[1] < TOKEN_TTL:
            return cached[0]
        try:
            device = await self._ingest.store.get_device(serial)
        except StoreError:
            return None
        value = device.attributes.get(TOKEN_ATTRIBUTE) if device is not None else None
        token = str(value) if value else None
        if len(self._allowed) > 100_000:
            self._allowed.clear()
        self._allowed[serial] = (token, now)
        return token

    def _log_limited(self, key: str, level: int, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._logged.get(key, -LOG_EVERY) >= LOG_EVERY:
            self._logged[key] = now
            if len(self._logged) > 10_000:
                self._logged.clear()
            log.log(level, message, *args)


def _reply(con: bool, code: Code, payload: bytes = b"") -> aiocoap.Message:
    if con:
        return aiocoap.Message(code=code, payload=payload)
    return aiocoap.Message(code=code, payload=payload, no_response=NO_RESPONSE)
