"""InfluxDB sink: writes readings as line protocol to v1 `/write` or v2 `/api/v2/write`.

A batch's lines go out in requests of at most `lines_per_request` lines and `max_request_bytes`
bytes, gzipped, up to `max_in_flight` at once. Order-safe: the lines of one series (measurement
and tag set) always travel in the same request, or in requests sent one after the other, so a
later value of a point never overtakes an earlier one. `send` returns only when every request
of the batch was confirmed, so the cursor moves over confirmed messages only.
"""

from __future__ import annotations

import asyncio
import gzip
import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import NoReturn

import httpx
import orjson

from fieldbridge.errors import (
    DeliveryError,
    PartialDeliveryError,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from fieldbridge.model import JournalEntry
from fieldbridge.plugin import SinkType, register_sink
from fieldbridge.sinks.http_client import HttpDestination, sink_client
from fieldbridge.sinks.http_errors import check_response, transport_failure
from fieldbridge.sinks.influxdb_lines import Line, Rendered, Renderer
from fieldbridge.sinks.influxdb_partial import rejected_lines
from fieldbridge.sinks.influxdb_settings import InfluxDBSettings
from fieldbridge.store import Store

V1_PRECISION = {"s": "s", "ms": "ms", "us": "u", "ns": "n"}


# Lanes by device only when the batch has at least this many devices per lane: fewer would
# leave lanes empty or lopsided (a one-device backlog would go one request at a time).
DEVICES_PER_LANE = 2
MIN_LINES = 1_000  # a request is not cut smaller than this to fill a round of in-flight requests
GZIP_IN_THREAD = 64 * 1024  # a batch's bodies at least this long are gzipped off the event loop


@dataclass(frozen=True, slots=True)
class Request:
    body: bytes  # uncompressed
    texts: list[str]  # its lines
    owners: list[JournalEntry]  # the message of each line (same positions)


# A batch's lanes of requests, and what each request posts (same positions).
Planned = tuple[list[list[Request]], list[list[bytes]]]


def plan_requests(
    rendered: Rendered, max_lines: int, max_bytes: int, in_flight: int = 1
) -> list[list[Request]]:
    """Lanes of requests: a lane's requests go one after the other, lanes go side by side. A
    series keeps to one lane, so its points keep their order: by its device when the batch
    has enough devices to fill the lanes (devices spread by their lines, a message's lines
    moving as one slice), else by the series' hash, line by line. A large batch gets a
    multiple of `in_flight` lanes, so its requests go in full rounds: a last request alone
    would keep the batch waiting while influxd has cores to spare."""
    texts, owners, hashes, spans = rendered
    needed = max(1, -(-len(texts) // max_lines))
    rounds = -(-needed // in_flight) * in_flight
    lanes_wanted = max(needed, min(rounds, len(texts) // MIN_LINES))
    if lanes_wanted == 1:
        return [_requests(texts, owners, max_lines, max_bytes)] if texts else []
    lanes: list[tuple[list[str], list[JournalEntry]]] = [([], []) for _ in range(lanes_wanted)]
    if spans is not None and len({crc for _, crc in spans}) >= DEVICES_PER_LANE * lanes_wanted:
        lane_of = _spread(spans, lanes_wanted)
        start = 0
        for end, crc in spans:
            lane_texts, lane_owners = lanes[lane_of[crc]]
            lane_texts += texts[start:end]
            lane_owners += owners[start:end]
            start = end
    else:
        for text, owner, crc in zip(texts, owners, hashes, strict=True):
            lane_texts, lane_owners = lanes[crc % lanes_wanted]
            lane_texts.append(text)
            lane_owners.append(owner)
    return [_requests(t, o, max_lines, max_bytes) for t, o in lanes if t]


def _spread(spans: list[tuple[int, int]], lanes: int) -> dict[int, int]:
    """A lane for each device (its hash) of a batch: the devices with most lines first, each
    to the lane with fewest so far, so the lanes end at about the same time."""
    lines: dict[int, int] = {}
    start = 0
    for end, crc in spans:
        lines[crc] = lines.get(crc, 0) + end - start
        start = end
    loads = [(0, lane) for lane in range(lanes)]  # a heap of (lines so far, lane)
    lane_of: dict[int, int] = {}
    for crc, count in sorted(lines.items(), key=lambda item: (-item[1], item[0])):
        load, lane = heapq.heappop(loads)
        lane_of[crc] = lane
        heapq.heappush(loads, (load + count, lane))
    return lane_of


def _requests(
    texts: list[str], owners: list[JournalEntry], max_lines: int, max_bytes: int
) -> list[Request]:
    """A lane's lines in requests of at most `max_lines` lines and `max_bytes` bytes."""
    out: list[Request] = []
    for start in range(0, len(texts), max_lines):
        some, theirs = texts[start : start + max_lines], owners[start : start + max_lines]
        body = _body(some)
        if len(body) <= max_bytes:
            out.append(Request(body, some, theirs))
            continue
        first, size = 0, 0  # too long: cut by bytes, line by line
        for at, text in enumerate(some):
            grow = (len(text) if text.isascii() else len(text.encode())) + 1
            if at > first and size + grow > max_bytes:
                out.append(Request(_body(some[first:at]), some[first:at], theirs[first:at]))
                first, size = at, 0
            size += grow
        out.append(Request(_body(some[first:]), some[first:], theirs[first:]))
    return out


def _gzipped(lanes: list[list[Request]]) -> list[list[bytes]]:
    return [[gzip.compress(request.body, compresslevel=1) for request in lane] for lane in lanes]


def _body(texts: list[str]) -> bytes:
    return ("\n".join(texts) + "\n").encode()


class InfluxDBDestination(HttpDestination):
    """One POST per request body; `transport` replaces httpx's network transport."""

    fetches_readings = True  # packed in the journal row (most), else read as rows

    def __init__(
        self, settings: InfluxDBSettings, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.settings = settings
        self._renderer = Renderer(settings.layout())
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._store: Store | None = None
        # The next batch prepared while the current one is sent: its ids, teams and requests.
        self._prepared: tuple[list[int], dict[str, str | None], Planned] | None = None
        base = str(settings.url).rstrip("/")
        if settings.v2:
            self._endpoint = f"{base}/api/v2/write"
            self._params = {
                "org": settings.org or "",
                "bucket": settings.bucket or "",
                "precision": settings.precision,
            }
        else:
            self._endpoint = f"{base}/write"
            self._params = {
                "db": settings.database or "",
                "precision": V1_PRECISION[settings.precision],
            }
            if settings.retention_policy:
                self._params["rp"] = settings.retention_policy
        # Built once: httpx would merge and parse the parameters again on every request.
        self._url = httpx.URL(self._endpoint).copy_merge_params(self._params)
        self._what = f"influxdb {settings.name}"
        where = f"sinks.influxdb {settings.name}"
        if settings.v2:
            self._hints = {
                401: f"check `token` of {where}",
                403: f"the token of {where} needs write access to bucket {settings.bucket!r}",
                404: f"check `org` and `bucket` of {where}",
            }
        else:
            self._hints = {
                401: f"check `username` and `password` of {where}",
                403: f"the user of {where} needs WRITE on database {settings.database!r}",
                404: f"create the database, or check `database` of {where}",
            }
        self._hints[413] = f"lower `max_request_bytes` of {where}"

    def bind(self, store: Store) -> None:
        self._store = store

    async def __aenter__(self) -> InfluxDBDestination:
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self.settings.gzip:
            headers["Content-Encoding"] = "gzip"
        if self.settings.token is not None:
            headers["Authorization"] = f"Token {self.settings.token.get_secret_value()}"
        limits = httpx.Limits(
            max_connections=self.settings.max_in_flight,
            max_keepalive_connections=self.settings.max_in_flight,
            keepalive_expiry=30.0,
        )
        self._client = sink_client(self.settings, headers, transport=self._transport, limits=limits)
        if self.settings.username is not None and self.settings.password is not None:
            self._client.auth = httpx.BasicAuth(
                self.settings.username, self.settings.password.get_secret_value()
            )
        return self

    async def _teams(self, entries: Sequence[JournalEntry]) -> dict[str, str | None]:
        if self._store is None or not self.settings.uses_team():
            return {}
        return await self._store.device_teams({e.device for e in entries})

    async def prepare(self, entries: Sequence[JournalEntry]) -> None:
        """Render, cut into requests and gzip the next batch while influxd takes the current
        one (one batch kept): the next batch's first request goes out as soon as the current
        batch is confirmed."""
        self._prepared = None
        teams = await self._teams(entries)
        self._prepared = ([e.id for e in entries], teams, await self._requests(entries, teams))

    async def _requests(
        self, entries: Sequence[JournalEntry], teams: Mapping[str, str | None]
    ) -> Planned:
        """The batch's lanes of requests and what each request posts (its body, gzipped when
        the settings say so: in a thread, all at once, as zlib lets go of the GIL)."""
        rendered = self._renderer.texts(await self._with_readings(entries), teams)
        lanes = plan_requests(
            rendered,
            self.settings.lines_per_request,
            self.settings.max_request_bytes,
            self.settings.max_in_flight,
        )
        del rendered
        if not self.settings.gzip:
            return lanes, [[request.body for request in lane] for lane in lanes]
        if sum(len(request.body) for lane in lanes for request in lane) >= GZIP_IN_THREAD:
            return lanes, await asyncio.to_thread(_gzipped, lanes)
        return lanes, _gzipped(lanes)

    async def _with_readings(self, entries: Sequence[JournalEntry]) -> Sequence[JournalEntry]:
        """The messages read without readings given them: most carry them packed; the rest
        get their reading rows."""
        bare = [e.id for e in entries if e.packed is None and not e.readings and not e.rows]
        if not bare:
            return entries
        assert self._store is not None, "the sink engine binds the store before sending"
        rows = await self._store.reading_rows(bare)
        return [replace(e, rows=rows[e.id]) if e.id in rows else e for e in entries]

    async def send(self, entries: Sequence[JournalEntry]) -> None:
        prepared = self._prepared
        if prepared is not None and prepared[0] == [e.id for e in entries]:
            self._prepared = None
            _, teams, (lanes, contents) = prepared
        else:  # another set of messages (a route skipped some, a retry, a halving): render
            teams = await self._teams(entries)
            lanes, contents = await self._requests(entries, teams)
        del prepared
        if not lanes:
            return  # messages without readings: nothing to write
        window = asyncio.Semaphore(self.settings.max_in_flight)
        results: list[BaseException | None] = await asyncio.gather(
            *(
                self._lane(requests, posts, window, teams)
                for requests, posts in zip(lanes, contents, strict=True)
            ),
            return_exceptions=True,
        )
        del lanes, contents  # the batch's text and bodies are not kept while an error is handled
        failure = _failure(results, f"{self._what} refused {{}} of {len(entries)} messages")
        del results
        if failure is not None:
            try:
                raise failure
            finally:
                # Else the exception would hold this frame and this frame the exception: a
                # cycle only the garbage collector breaks, late (the batch's text with it).
                del failure

    async def _lane(
        self,
        requests: list[Request],
        posts: list[bytes],
        window: asyncio.Semaphore,
        teams: Mapping[str, str | None],
    ) -> None:
        """A lane's requests in order; the partial refusals of all of them together."""
        rejected: dict[int, str] = {}
        status: int | None = None
        for request, content in zip(requests, posts, strict=True):
            async with window:
                try:
                    await self._post(request, content, teams)
                except PartialDeliveryError as exc:
                    rejected.update(exc.rejected)
                    status = exc.status
        if rejected:
            raise PartialDeliveryError(
                f"{self._what}: partial write", rejected, status=status, confirm=True
            )

    async def _post(
        self, request: Request, content: bytes, teams: Mapping[str, str | None]
    ) -> None:
        """POST `content` (the request's body, gzipped or not as the settings say)."""
        assert self._client is not None, "use the destination inside `async with`"
        try:
            response = await self._client.post(self._url, content=content)
        except httpx.TransportError as exc:
            raise transport_failure(exc, self._what) from exc
        if response.status_code in (400, 422):
            # Only a "partial write" kept the good points: a bare `unable to parse` (2.x, or
            # 1.x when no line parsed) or `field type conflict` (1.x, within one request)
            # refused the whole request, which the engine then halves.
            message = _error_text(response)
            if "partial write" in message:
                lines = await self._lines(request, teams)
                self._partial(lines, message, response.status_code)
        if not 200 <= response.status_code < 300:
            self._refused(response)

    def _refused(self, response: httpx.Response) -> NoReturn:
        """Raise the DeliveryError the answer calls for, saying InfluxDB's reason and which
        setting to look at (shown in `sinks status` and /healthz)."""
        try:
            check_response(response, self._what)
        except DeliveryError as exc:
            detail = _error_text(response).strip()[:300]
            message = f"{exc}: {detail}" if detail else str(exc)
            hint = self._hints.get(response.status_code)
            raise type(exc)(
                f"{message} ({hint})" if hint else message,
                status=exc.status,
                body=exc.body,
                retry_after=exc.retry_after,
            ) from None
        raise AssertionError(f"HTTP {response.status_code} is not a refusal")

    async def _lines(self, request: Request, teams: Mapping[str, str | None]) -> list[Line]:
        """The lines of a request with what a partial write is matched against: its messages
        rendered again (the renderer is deterministic), keeping the lines it carried."""
        texts = set(request.texts)
        entries = await self._with_readings(list({id(e): e for e in request.owners}.values()))
        return [
            line
            for entry in entries
            for line in self._renderer.entry_lines(entry, teams.get(entry.device))
            if line.text in texts
        ]

    def _partial(self, lines: list[Line], message: str, status: int) -> None:
        """Raise PartialDeliveryError naming the messages of the refused lines, or a plain
        refusal of the request when they cannot be told apart (the engine then bisects)."""
        rejected = rejected_lines(message, lines)
        if rejected is None:
            raise PermanentDeliveryError(
                f"{self._what} answered HTTP {status}", status=status, body=message[:4096]
            )
        raise PartialDeliveryError(
            f"{self._what}: partial write", rejected, status=status, confirm=True
        )


def _failure(results: Sequence[BaseException | None], partly: str) -> BaseException | None:
    """What the lanes of a batch ended with, to raise: an outage first (the whole batch is
    tried again later), then a refusal as a whole (the engine bisects) or a bug, then the
    partial refusals of all lanes together (`partly`: the message, {} the count refused)."""
    for result in results:
        if isinstance(result, RetryableDeliveryError):
            return result
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, PartialDeliveryError):
            return result
    partial = [r for r in results if isinstance(r, PartialDeliveryError)]
    if not partial:
        return None
    rejected = {k: v for failure in partial for k, v in failure.rejected.items()}
    return PartialDeliveryError(
        partly.format(len(rejected)), rejected, status=partial[0].status, confirm=True
    )


def _error_text(response: httpx.Response) -> str:
    """The error of an InfluxDB answer: v1 {"error"}, v2 {"code", "message"}, or the text."""
    try:
        parsed = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return response.text
    if isinstance(parsed, dict):
        for key in ("error", "message"):
            if isinstance(parsed.get(key), str):
                return str(parsed[key])
    return response.text


register_sink("influxdb", SinkType(InfluxDBSettings, InfluxDBDestination))
