"""/v1/readings: one device's readings by time range and quantity, as JSON pages or CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from fieldbridge.store import Store
from fieldbridge.store.registry import ReadingKey
from fieldbridge.timefmt import iso, parse_iso
from fieldbridge.web.api.deps import Caller, Context
from fieldbridge.web.api.errors import ApiError, documented
from fieldbridge.web.api.paging import decode_cursor, encode_cursor
from fieldbridge.web.api.schemas import PRINTABLE, Page, ReadingOut

router = APIRouter(tags=["readings"])
CSV_MAX_ROWS = 100_000  # one CSV answer at most; ask again from the last row's time for more
CSV_PAGE = 1000  # rows read from the store per query while a CSV streams
CSV_COLUMNS = ("device", "measured_at", "quantity", "channel", "value", "unit", "message_id")
Time = Annotated[
    str | None, Query(max_length=64, description="ISO 8601, e.g. 2026-11-23T08:00:00Z")
]

CSV_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON: a page of readings; CSV (format=csv): every reading, up to limit",
        "content": {"text/csv": {"schema": {"type": "string"}}},
    }
}


def _time(text: str | None, name: str) -> float | None:
    if text is None:
        return None
    try:
        return parse_iso(text)
    except (ValueError, OverflowError, OSError):
        raise ApiError(
            422, "invalid_request", f"{name} {text!r} is not ISO 8601 (e.g. 2026-11-23T08:00:00Z)"
        ) from None


def _key(position: Any) -> ReadingKey:
    try:
        at, mid, seq = position
        if isinstance(at, bool) or not isinstance(at, int | float):
            raise TypeError
        if not isinstance(mid, int) or not isinstance(seq, int):
            raise TypeError
        return ReadingKey(float(at), mid, seq)
    except (TypeError, ValueError):
        raise ApiError(400, "invalid_cursor", "cursor: not a cursor of this listing") from None


@router.get(
    "/v1/readings",
    response_model=Page[ReadingOut],
    responses={**CSV_RESPONSE, **documented(400, 422)},
    summary="List or export readings",
)
async def list_readings(
    ctx: Context,
    _: Caller,
    device: Annotated[str, Query(min_length=1, max_length=256, pattern=PRINTABLE)],
    since: Time = None,
    until: Time = None,
    quantity: Annotated[str | None, Query(max_length=256, pattern=PRINTABLE)] = None,
    format: Literal["json", "csv"] = "json",
    cursor: Annotated[str | None, Query(max_length=2048)] = None,
    limit: Annotated[
        int | None,
        Query(
            ge=1,
            le=CSV_MAX_ROWS,
            description=f"JSON: per page (default 1000, at most 1000); CSV: rows in all "
            f"(default and at most {CSV_MAX_ROWS}).",
        ),
    ] = None,
) -> Any:
    """A device's readings measured in [since, until), in time order, of one quantity or all.
    JSON comes in pages (`cursor`); CSV streams every reading up to `limit` rows."""
    start, end = _time(since, "since"), _time(until, "until")
    if format == "csv":
        rows = limit or CSV_MAX_ROWS
        name = f"readings-{''.join(c if c.isalnum() else '_' for c in device)[:64]}.csv"
        return StreamingResponse(
            _csv(ctx.store, device, start, end, quantity, rows),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
    if limit is not None and limit > 1000:
        raise ApiError(422, "invalid_request", "limit: at most 1000 readings per JSON page")
    position = decode_cursor(cursor, "readings")
    after = None if position is None else _key(position)
    found, key = await ctx.store.readings_page(
        device, since=start, until=end, quantity=quantity, after=after, limit=limit or 1000
    )
    return Page[ReadingOut](
        items=[ReadingOut.of(r) for r in found],
        next_cursor=None
        if key is None
        else encode_cursor("readings", [key.measured_at, key.message_id, key.seq]),
    )


async def _csv(
    store: Store,
    device: str,
    since: float | None,
    until: float | None,
    quantity: str | None,
    rows: int,
) -> AsyncIterator[str]:
    """The CSV, page by page: memory holds one page, whatever the range."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    yield out.getvalue()
    after: ReadingKey | None = None
    left = rows
    while left > 0:
        found, after = await store.readings_page(
            device,
            since=since,
            until=until,
            quantity=quantity,
            after=after,
            limit=min(CSV_PAGE, left),
        )
        out.seek(0)
        out.truncate()
        for r in found:
            reading = r.reading
            writer.writerow(
                (r.device, iso(reading.measured_at), reading.quantity, reading.channel,
                 "" if reading.value is None else reading.value, reading.unit or "",
                 r.message_id)
            )  # fmt: skip
        yield out.getvalue()
        left -= len(found)
        if after is None:
            return
