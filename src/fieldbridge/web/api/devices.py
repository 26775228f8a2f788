"""/v1/devices: the registry, searched and paged, one device in full, and changing one."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request

from fieldbridge.model import Device, DeviceStatus
from fieldbridge.store import Store
from fieldbridge.store.devicechange import (
    ChangeRefused,
    DeviceChange,
    change_device,
    parse_subscriber,
)
from fieldbridge.web.api.deps import Caller, Context, Writer
from fieldbridge.web.api.errors import ApiError, documented, not_found
from fieldbridge.web.api.paging import decode_cursor, encode_cursor, str_position
from fieldbridge.web.api.schemas import PRINTABLE, DeviceDetail, DeviceOut, DevicePatch, Page
from fieldbridge.web.security.audit import audit

router = APIRouter(tags=["devices"])
DeviceId = Annotated[
    str, Path(min_length=1, max_length=256, pattern=PRINTABLE, description="The device id.")
]
Filter = Annotated[str | None, Query(max_length=256, pattern=PRINTABLE)]


@router.get(
    "/v1/devices",
    response_model=Page[DeviceOut],
    responses=documented(400, 422),
    summary="List devices",
)
async def list_devices(
    ctx: Context,
    _: Caller,
    kind: Filter = None,
    source: Filter = None,
    status: Literal["current", "down", "maintenance"] | None = None,
    q: Annotated[
        str | None,
        Query(max_length=256, pattern=PRINTABLE, description="Part of the id or name, any case."),
    ] = None,
    cursor: Annotated[str | None, Query(max_length=2048)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Page[DeviceOut]:
    """Devices by id, filtered by kind, source and status, searched by id or name."""
    after = decode_cursor(cursor, "devices")
    found = await ctx.store.search_devices(
        kind=kind,
        source=source,
        status=DeviceStatus(status) if status else None,
        q=q,
        after=None if after is None else str_position(after),
        limit=limit + 1,  # one more: is there a next page?
    )
    more = len(found) > limit
    found = found[:limit]
    return Page[DeviceOut](
        items=[DeviceOut.of(d) for d in found],
        next_cursor=encode_cursor("devices", found[-1].id) if more else None,
    )


async def _detail(store: Store, device: Device) -> DeviceDetail:
    subscribers = (await store.subscribers([device.id])).get(device.id, [])
    return DeviceDetail.full(
        device,
        await store.device_links(device.id),
        await store.relayed_by(device.id),
        [str(s) for s in subscribers],
        await store.transitions(device.id),
    )


@router.get(
    "/v1/devices/{device_id}",
    response_model=DeviceDetail,
    responses=documented(404, 422),
    summary="Show a device",
)
async def show_device(ctx: Context, _: Caller, device_id: DeviceId) -> DeviceDetail:
    """A device with its attributes, flags, status, relays, subscribers and status changes."""
    device = await ctx.store.get_device(device_id)
    if device is None:
        raise not_found(f"device {device_id!r}", "GET /api/v1/devices lists the known ones")
    return await _detail(ctx.store, device)


@router.patch(
    "/v1/devices/{device_id}",
    response_model=DeviceDetail,
    responses=documented(403, 404, 413, 422),
    summary="Change a device",
)
async def patch_device(
    request: Request, ctx: Context, _: Writer, device_id: DeviceId, patch: DevicePatch
) -> DeviceDetail:
    """Set flags (e.g. upload_trapnz), attributes, name, status (current or maintenance),
    message type, allowed downtime, role, team, a fixed location or who is notified: the
    rules of `fieldbridge devices set`."""
    given = patch.model_fields_set
    try:
        change = DeviceChange(
            flags=patch.flags or {},
            attributes=patch.attributes or {},
            name=patch.name,
            message_type=patch.message_type,
            status=DeviceStatus(patch.status) if patch.status else None,
            allowed_downtime_min=patch.allowed_downtime_min,
            role=patch.role,
            team=patch.team,
            location=patch.location.model_dump() if patch.location is not None else None,
            remove_location="location" in given and patch.location is None,
            notify=tuple(parse_subscriber(s, "notify") for s in patch.notify),
            no_notify=tuple(parse_subscriber(s, "no_notify") for s in patch.no_notify),
        )
        device = await change_device(ctx.store, device_id, change)
    except ChangeRefused as exc:
        raise ApiError(422, "invalid_change", str(exc)) from None
    if device is None:
        raise not_found(f"device {device_id!r}", "devices appear once they sent a message")
    await audit(
        request,
        ctx.store,
        "device.update",
        device_id,
        patch.model_dump(mode="json", exclude_unset=True),
    )
    return await _detail(ctx.store, device)
