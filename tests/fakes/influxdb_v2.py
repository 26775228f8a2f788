"""A faithful InfluxDB 2.x write API (`POST /api/v2/write`) for the tests (spec §4.2, §4.5).

Checks what the real server checks: `Authorization: Token …` (401), org or orgID and a known
bucket (404), precision in ns/us/ms/s (400), gzip bodies, a body limit (413), line protocol
parsed for real (escapes, quoted strings, type suffixes; 400 `invalid` for a malformed line,
whole batch refused) and the field-type memory of each measurement (422 partial write, the good
points kept). A cloud mode answers 429 or 503 with Retry-After on demand. What was written is
kept apart from the answers, in `points`.
"""

from __future__ import annotations

import gzip
import re
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fieldbridge.web.server import WebServer

SCALE = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
_INT = re.compile(r"^-?\d+i$")
_UINT = re.compile(r"^\d+u$")
_BOOL = {"t": True, "T": True, "true": True, "True": True, "TRUE": True}
_BOOL |= {"f": False, "F": False, "false": False, "False": False, "FALSE": False}


class LineError(ValueError):
    pass


@dataclass(frozen=True)
class Point:
    measurement: str
    tags: dict[str, str]
    fields: dict[str, Any]
    time_ns: int


def _scan(text: str, start: int, stops: str, *, quotes: bool) -> int:
    """Index of the first unescaped character of `stops` from `start` (with `quotes`: outside
    a string field value, which opens with a quote right after an equals sign), or the end."""
    i, quoted = start, False
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            i += 2
            continue
        if quotes and c == '"' and (quoted or (i > 0 and text[i - 1] == "=")):
            quoted = not quoted
        elif not quoted and c in stops:
            return i
        i += 1
    if quoted:
        raise LineError("unbalanced quotes")
    return len(text)


def _split(text: str, sep: str, *, quotes: bool = False) -> list[str]:
    parts, start = [], 0
    while True:
        end = _scan(text, start, sep, quotes=quotes)
        parts.append(text[start:end])
        if end == len(text):
            return parts
        start = end + 1


def split_lines(body: str) -> list[str]:
    """The lines of a body as InfluxDB's scanner cuts them: a newline inside a string field
    value (a quote after an equals sign, in the field set) does not end a line. Blank lines
    and comments (`#` first) are left out."""
    cut: list[str] = []
    start, i, fields, quoted = 0, 0, False, False
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            i += 2
            continue
        if quoted:
            quoted = c != '"'
        elif c == "\n":
            cut.append(body[start:i])
            start, fields = i + 1, False
        elif c == " ":
            fields = True
        elif c == '"' and fields and body[i - 1] == "=":
            quoted = True
        i += 1
    if quoted:
        raise LineError("unbalanced quotes")
    cut.append(body[start:])
    return [line for line in cut if line.strip() and not line.lstrip().startswith("#")]


def _unescape(text: str, chars: str) -> str:
    """InfluxDB's unescaping: a backslash before one of `chars` is dropped, any other kept."""
    return re.sub("\\\\([" + re.escape(chars) + "])", r"\1", text)


# What InfluxDB unescapes in each element (models/points.go; checked on influxd 1.6.7).
NAME_ESCAPES = ', ="'  # measurements and field keys
TAG_ESCAPES = ", ="


def _field_value(raw: str) -> Any:
    if raw.startswith('"'):
        if len(raw) < 2 or not raw.endswith('"'):
            raise LineError("unbalanced quotes")
        return re.sub(r'\\([\\"])', r"\1", raw[1:-1])
    if raw in _BOOL:
        return _BOOL[raw]
    if _INT.match(raw):
        return int(raw[:-1])
    if _UINT.match(raw):
        return int(raw[:-1])
    try:
        return float(raw)
    except ValueError:
        raise LineError(f"invalid number {raw!r}") from None


def parse_line(line: str, scale: int, now_ns: int) -> Point:
    """One line of line protocol (spec §4.3), as InfluxDB reads it."""
    key_end = _scan(line, 0, " ", quotes=False)
    if key_end == len(line):
        raise LineError("missing fields")
    series, rest = line[:key_end], line[key_end:].lstrip(" ")
    fields_end = _scan(rest, 0, " ", quotes=True)
    field_set, stamp_text = rest[:fields_end], rest[fields_end:].strip(" ")
    if not field_set:
        raise LineError("missing fields")
    if " " in stamp_text:
        raise LineError("invalid field format")
    key_parts = _split(series, ",")
    measurement = _unescape(key_parts[0], NAME_ESCAPES)
    if not measurement:
        raise LineError("missing measurement")
    tags: dict[str, str] = {}
    for pair in key_parts[1:]:
        kv = _split(pair, "=")
        if len(kv) != 2 or not kv[0] or not kv[1]:
            raise LineError("missing tag value" if len(kv) == 2 else "invalid tag format")
        tags[_unescape(kv[0], TAG_ESCAPES)] = _unescape(kv[1], TAG_ESCAPES)
    fields: dict[str, Any] = {}
    for pair in _split(field_set, ",", quotes=True):
        kv = _split(pair, "=", quotes=True)
        if len(kv) != 2 or not kv[0] or not kv[1]:
            raise LineError("missing field value" if len(kv) == 2 else "invalid field format")
        fields[_unescape(kv[0], NAME_ESCAPES)] = _field_value(kv[1])
    if stamp_text:
        try:
            stamp = int(stamp_text) * scale
        except ValueError:
            raise LineError("bad timestamp") from None
    else:
        stamp = now_ns
    return Point(measurement, tags, fields, stamp)


def type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    return "string"


@dataclass
class FakeInfluxDBv2:
    """`async with FakeInfluxDBv2(token=..., org=..., buckets={...}) as influx:`"""

    token: str = "fake-token"
    org: str = "fieldbridge"
    org_id: str = "0a1b2c3d4e5f6789"  # the org's ID, for `orgID=`
    buckets: set[str] = field(default_factory=lambda: {"sensors"})
    max_body: int = 25_000_000
    stored: dict[tuple[Any, ...], Point] = field(default_factory=dict)  # one per series and time
    # (series, time) of every point written, in the order written (a rewrite appears again)
    arrivals: list[tuple[tuple[Any, ...], int]] = field(default_factory=list)
    requests: list[tuple[float, int, int]] = field(default_factory=list)  # (at, status, lines)
    gzipped: int = 0
    violations: list[str] = field(default_factory=list)
    _types: dict[tuple[str, str], str] = field(default_factory=dict)
    # Answer dropped=1 whatever was refused, as influxd 1.6.7 was seen to when the first
    # refused line of a request was a type conflict: the count cannot be trusted.
    undercount: bool = False
    _busy: list[tuple[int, str]] = field(default_factory=list)  # (status, retry-after) queue

    def __post_init__(self) -> None:
        app = Starlette(routes=[Route("/api/v2/write", self._write, methods=["POST"])])
        self._web = WebServer(app, "127.0.0.1:0", graceful_s=1, keep_alive_s=30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._web.port}"

    def busy(self, status: int, retry_after: str, times: int = 1) -> None:
        """Cloud mode: answer the next `times` writes with `status` and Retry-After."""
        self._busy.extend([(status, retry_after)] * times)

    @property
    def points(self) -> list[Point]:
        return list(self.stored.values())

    def series(self, measurement: str) -> list[Point]:
        return [p for p in self.points if p.measurement == measurement]

    async def __aenter__(self) -> FakeInfluxDBv2:
        await self._web.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._web.__aexit__(exc_type, exc, tb)

    @staticmethod
    def _error(status: int, code: str, message: str) -> Response:
        return JSONResponse({"code": code, "message": message}, status_code=status)

    async def _write(self, request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        if auth != f"Token {self.token}":
            return self._error(401, "unauthorized", "unauthorized access")
        org, org_id = request.query_params.get("org"), request.query_params.get("orgID")
        if not org and not org_id:
            return self._error(400, "invalid", "Please provide either orgID or org")
        if org_id and org_id != self.org_id:
            return self._error(404, "not found", "organization not found")
        if org and org != self.org:
            return self._error(404, "not found", f'organization name "{org}" not found')
        if request.query_params.get("bucket") not in self.buckets:
            return self._error(404, "not found", "bucket not found")
        precision = request.query_params.get("precision", "ns")
        if precision not in SCALE:
            return self._error(400, "invalid", f"invalid precision {precision!r}")
        if self._busy:
            status, retry_after = self._busy.pop(0)
            self.requests.append((time.monotonic(), status, 0))
            return Response(status_code=status, headers={"Retry-After": retry_after})
        body = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            self.gzipped += 1
            body = gzip.decompress(body)
        if len(body) > self.max_body:
            return self._error(
                413, "request too large", "unable to read data: points batch is too large"
            )
        if not request.headers.get("content-type", "").startswith("text/plain"):
            self.violations.append(f"content-type {request.headers.get('content-type')!r}")
        return self._take(body.decode(), SCALE[precision])

    def _take(self, text: str, scale: int) -> Response:
        parsed: list[Point] = []
        try:
            lines = split_lines(text)
        except LineError as exc:
            self.requests.append((time.monotonic(), 400, 0))
            return self._error(400, "invalid", f"unable to parse body: {exc}")
        for line in lines:
            try:
                parsed.append(parse_line(line, scale, 0))
            except LineError as exc:
                self.requests.append((time.monotonic(), 400, len(lines)))
                return self._error(400, "invalid", f"unable to parse '{line}': {exc}")
        dropped, first = 0, ""
        for point in parsed:
            conflict = ""
            for name, value in point.fields.items():
                known = self._types.setdefault((point.measurement, name), type_name(value))
                if known != type_name(value):
                    conflict = (
                        f'field type conflict: input field "{name}" on measurement '
                        f'"{point.measurement}" is type {type_name(value)}, already exists as '
                        f"type {known}"
                    )
                    break
            if conflict:
                dropped += 1
                first = first or conflict
                continue
            key = (point.measurement, tuple(sorted(point.tags.items())), point.time_ns)
            old = self.stored.get(key)
            fields = {**old.fields, **point.fields} if old else point.fields
            self.stored[key] = Point(point.measurement, point.tags, fields, point.time_ns)
            self.arrivals.append((key[:2], point.time_ns))
        if dropped:
            self.requests.append((time.monotonic(), 422, len(lines)))
            return self._error(
                422,
                "unprocessable entity",
                "failure writing points to database: partial write: "
                f"{first} dropped={1 if self.undercount else dropped}",
            )
        self.requests.append((time.monotonic(), 204, len(lines)))
        return Response(status_code=204)
