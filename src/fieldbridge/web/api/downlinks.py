"""/v1/efento/downlinks: configuration downlinks for Efento sensors, queued, listed, cancelled."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request

from fieldbridge.codecs.efento import encode_config
from fieldbridge.efento_queue import queue_config
from fieldbridge.model import DownlinkState
from fieldbridge.web.api.deps import Caller, Context, Writer
from fieldbridge.web.api.errors import ApiError, documented, not_found
from fieldbridge.web.api.paging import decode_cursor, encode_cursor, int_position
from fieldbridge.web.api.schemas import DownlinkIn, DownlinkOut, Page
from fieldbridge.web.security.audit import audit

router = APIRouter(tags=["efento"])
REQUESTS = {"device-info": "device_info_request", "configuration": "configuration_request"}
DownlinkId = Annotated[int, Path(ge=1, le=2**62, description="The downlink's id.")]


@router.get(
    "/v1/efento/downlinks",
    response_model=Page[DownlinkOut],
    responses=documented(400, 422),
    summary="List Efento downlinks",
)
async def list_downlinks(
    ctx: Context,
    _: Caller,
    device: Annotated[str | None, Query(pattern=r"^[0-9A-Fa-f]{12}$")] = None,
    state: Literal["queued", "sent", "confirmed", "failed"] | None = None,
    cursor: Annotated[str | None, Query(max_length=2048)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Page[DownlinkOut]:
    """Downlinks in any state, newest first (state=queued: those still waiting)."""
    before = decode_cursor(cursor, "downlinks")
    found = await ctx.store.list_downlinks(
        device=device.upper() if device else None,
        state=DownlinkState(state) if state else None,
        before=None if before is None else int_position(before),
        limit=limit + 1,  # one more: is there a next page?
    )
    more = len(found) > limit
    found = found[:limit]
    return Page[DownlinkOut](
        items=[DownlinkOut.of(d) for d in found],
        next_cursor=encode_cursor("downlinks", found[-1].id) if more else None,
    )


@router.post(
    "/v1/efento/downlinks",
    response_model=DownlinkOut,
    status_code=201,
    responses=documented(403, 413, 422),
    summary="Queue an Efento downlink",
)
async def queue_downlink(
    request: Request, ctx: Context, _: Writer, body: DownlinkIn
) -> DownlinkOut:
    """Queue a configuration downlink; it leaves in the answer to the sensor's next
    confirmable /m or /i (as `fieldbridge efento config`)."""
    fields: dict[str, Any] = dict(body.settings)
    for wanted in body.requests:
        fields[REQUESTS[wanted]] = True
    try:
        payload = encode_config(fields)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ApiError(422, "invalid_downlink", f"settings: {exc}") from None
    device = body.device.upper()
    downlink_id = await queue_config(ctx.store, device, payload, fields, "api")
    await audit(request, ctx.store, "downlink.queue", device, {"id": downlink_id, "fields": fields})
    queued = await ctx.store.get_downlink(downlink_id)
    if queued is None:  # cancelled or pruned in between: it was queued all the same
        raise not_found(f"downlink {downlink_id}")
    return DownlinkOut.of(queued)


@router.post(
    "/v1/efento/downlinks/{downlink_id}/cancel",
    response_model=DownlinkOut,
    responses=documented(403, 404, 409, 422),
    summary="Cancel an Efento downlink",
)
async def cancel_downlink(
    request: Request, ctx: Context, principal: Writer, downlink_id: DownlinkId
) -> DownlinkOut:
    """Give up a queued or sent (unconfirmed) downlink: it is never sent (again) and shows
    as failed, "cancelled by" whoever did it. 409 once it is confirmed or failed."""
    cancelled = await ctx.store.cancel_downlink(downlink_id, f"cancelled by {principal.actor}")
    if cancelled is None:
        found = await ctx.store.get_downlink(downlink_id)
        if found is None:
            raise not_found(f"downlink {downlink_id}")
        raise ApiError(
            409, "conflict", f"downlink {downlink_id} is {found.state.value}; nothing to cancel"
        )
    await audit(request, ctx.store, "downlink.cancel", cancelled.device, {"id": downlink_id})
    return DownlinkOut.of(cancelled)
