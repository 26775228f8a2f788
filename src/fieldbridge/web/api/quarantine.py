"""/v1/quarantine: payloads that did not decode; shown raw, decoded again, or dropped."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request

from fieldbridge.reingest import CannotReingest, reingest
from fieldbridge.web.api.deps import Caller, Context, Writer
from fieldbridge.web.api.errors import ApiError, documented, not_found
from fieldbridge.web.api.paging import decode_cursor, encode_cursor, int_position
from fieldbridge.web.api.schemas import PRINTABLE, Dropped, Page, QuarantineOut, ReingestOut
from fieldbridge.web.security.audit import audit

router = APIRouter(tags=["quarantine"])
QuarantineId = Annotated[int, Path(ge=1, le=2**62, description="The quarantined payload's id.")]
STATUS = {"not_found": 404, "unknown_source": 409, "no_codec": 409, "still_refused": 422}


@router.get(
    "/v1/quarantine",
    response_model=Page[QuarantineOut],
    responses=documented(400, 422),
    summary="List quarantined payloads",
)
async def list_quarantine(
    ctx: Context,
    _: Caller,
    source: Annotated[str | None, Query(max_length=256, pattern=PRINTABLE)] = None,
    cursor: Annotated[str | None, Query(max_length=2048)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Page[QuarantineOut]:
    """Payloads refused by their codec, newest first, with the reason."""
    before = decode_cursor(cursor, "quarantine")
    found = await ctx.store.list_quarantine(
        source=source, before=None if before is None else int_position(before), limit=limit + 1
    )
    more = len(found) > limit
    found = found[:limit]
    return Page[QuarantineOut](
        items=[QuarantineOut.of(q) for q in found],
        next_cursor=encode_cursor("quarantine", found[-1].id) if more else None,
    )


@router.get(
    "/v1/quarantine/{quarantine_id}",
    response_model=QuarantineOut,
    responses=documented(404, 422),
    summary="Show a quarantined payload",
)
async def show_quarantined(ctx: Context, _: Caller, quarantine_id: QuarantineId) -> QuarantineOut:
    """One payload: the reason, its metadata, and the raw bytes as hex and as text."""
    found = await ctx.store.get_quarantined(quarantine_id)
    if found is None:
        raise not_found(f"quarantined payload {quarantine_id}")
    return QuarantineOut.of(found)


@router.post(
    "/v1/quarantine/{quarantine_id}/reingest",
    response_model=ReingestOut,
    responses=documented(403, 404, 409, 422, 503),
    summary="Decode a quarantined payload again",
)
async def reingest_quarantined(
    request: Request, ctx: Context, _: Writer, quarantine_id: QuarantineId
) -> ReingestOut:
    """Decode the payload again with its source's current codec (after a codec fix) and store
    it as ingest does; it leaves the quarantine once stored. 422 if still refused (it stays)."""
    # Ingest waits for room and commits within the store's own deadline; this bounds both.
    within = ctx.settings.store.commit_timeout_s + ctx.settings.ingest.in_flight_wait_s
    try:
        async with asyncio.timeout(within):
            done = await reingest(
                ctx.store, ctx.ingest, ctx.settings.source_settings, quarantine_id
            )
    except CannotReingest as exc:
        raise ApiError(STATUS.get(exc.code, 409), exc.code, exc.message) from None
    except TimeoutError:
        raise ApiError(
            503, "store_unavailable", f"ingest did not commit within {within:g} s; try again"
        ) from None
    await audit(
        request,
        ctx.store,
        "quarantine.reingest",
        str(quarantine_id),
        {"source": done.source, "message_ids": list(done.message_ids)},
    )
    return ReingestOut(
        quarantine_id=done.quarantine_id,
        source=done.source,
        message_ids=list(done.message_ids),
        duplicates=done.duplicates,
        quarantined=list(done.quarantined),
    )


@router.post(
    "/v1/quarantine/{quarantine_id}/drop",
    response_model=Dropped,
    responses=documented(403, 404, 422),
    summary="Drop a quarantined payload",
)
async def drop_quarantined(
    request: Request, ctx: Context, _: Writer, quarantine_id: QuarantineId
) -> Dropped:
    """Delete the payload for good."""
    if not await ctx.store.drop_quarantined(quarantine_id):
        raise not_found(f"quarantined payload {quarantine_id}")
    await audit(request, ctx.store, "quarantine.drop", str(quarantine_id))
    return Dropped(id=quarantine_id, dropped=True)
