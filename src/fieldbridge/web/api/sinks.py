"""/v1/sinks and /v1/deadletters: each sink's state, pause, resume, replay; refused messages."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request

from fieldbridge.model import DeadLetterState
from fieldbridge.sinks.status import sink_rows
from fieldbridge.timefmt import parse_iso
from fieldbridge.web.api.deps import Caller, Context, Writer
from fieldbridge.web.api.errors import ApiError, documented, not_found
from fieldbridge.web.api.paging import decode_cursor, encode_cursor, int_position
from fieldbridge.web.api.schemas import (
    PRINTABLE,
    Changed,
    DeadLetterOut,
    Dropped,
    Page,
    ReplayIn,
    ReplayOut,
    SinkOut,
    SinkPaused,
)
from fieldbridge.web.context import WebContext
from fieldbridge.web.security.audit import audit

router = APIRouter(tags=["sinks"])
SinkName = Annotated[str, Path(max_length=256, pattern=PRINTABLE, description="The sink's name.")]
DeadId = Annotated[int, Path(ge=1, le=2**62, description="The dead letter's id.")]


def _configured(ctx: WebContext, name: str) -> None:
    if not any(s.name == name for _, s in ctx.settings.sink_settings):
        known = ", ".join(s.name for _, s in ctx.settings.sink_settings) or "none configured"
        raise not_found(f"sink named {name!r} in the settings", f"sinks: {known}")


@router.get("/v1/sinks", response_model=list[SinkOut], summary="List sinks")
async def list_sinks(ctx: Context, _: Caller) -> list[SinkOut]:
    """Each configured sink's state, cursor, backlog, dead letters, skips and token health."""
    rows = await sink_rows(ctx.settings.sink_settings, ctx.store)
    return [SinkOut.model_validate(row) for row in rows]


async def _pause(request: Request, ctx: WebContext, name: str, paused: bool) -> SinkPaused:
    _configured(ctx, name)
    await ctx.store.set_paused(name, paused)
    await audit(request, ctx.store, "sink.pause" if paused else "sink.resume", name)
    return SinkPaused(name=name, paused=paused)


@router.post(
    "/v1/sinks/{name}/pause",
    response_model=SinkPaused,
    responses=documented(403, 404, 422),
    summary="Pause a sink",
)
async def pause_sink(request: Request, ctx: Context, _: Writer, name: SinkName) -> SinkPaused:
    """Stop sending; messages keep arriving in the journal and wait."""
    return await _pause(request, ctx, name, True)


@router.post(
    "/v1/sinks/{name}/resume",
    response_model=SinkPaused,
    responses=documented(403, 404, 422),
    summary="Resume a sink",
)
async def resume_sink(request: Request, ctx: Context, _: Writer, name: SinkName) -> SinkPaused:
    """Send again, starting where the sink stopped."""
    return await _pause(request, ctx, name, False)


@router.post(
    "/v1/sinks/{name}/replay",
    response_model=ReplayOut,
    responses=documented(403, 404, 413, 422),
    summary="Replay a sink",
)
async def replay_sink(
    request: Request, ctx: Context, _: Writer, name: SinkName, body: ReplayIn
) -> ReplayOut:
    """Send messages again from an id or a time; the running sink does the sending (watch
    its cursor in GET /api/v1/sinks)."""
    _configured(ctx, name)
    if (body.from_id is None) == (body.since is None):
        raise ApiError(422, "invalid_request", "give exactly one of from_id and since")
    since = None
    if body.since is not None:
        try:
            since = parse_iso(body.since)
        except (ValueError, OverflowError, OSError):
            raise ApiError(
                422,
                "invalid_request",
                f"since {body.since!r} is not ISO 8601 (e.g. 2026-11-23T08:00:00Z)",
            ) from None
    replay = await ctx.store.replay(name, from_id=body.from_id, since=since)
    await audit(
        request,
        ctx.store,
        "sink.replay",
        name,
        {"from_id": replay.from_id, "messages": replay.messages},
    )
    return ReplayOut(
        name=name, from_id=replay.from_id, head_id=replay.head_id, messages=replay.messages
    )


@router.get(
    "/v1/deadletters",
    response_model=Page[DeadLetterOut],
    responses=documented(400, 422),
    summary="List dead letters",
)
async def list_dead_letters(
    ctx: Context,
    _: Caller,
    sink: Annotated[str | None, Query(max_length=256, pattern=PRINTABLE)] = None,
    state: Literal["dead", "retry"] | None = None,
    cursor: Annotated[str | None, Query(max_length=2048)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Page[DeadLetterOut]:
    """Messages a destination refused for good, oldest first, with its answer."""
    after = decode_cursor(cursor, "deadletters")
    found = await ctx.store.list_dead_letters(
        sink=sink,
        state=DeadLetterState(state) if state else None,
        after=None if after is None else int_position(after),
        limit=limit + 1,  # one more: is there a next page?
    )
    more = len(found) > limit
    found = found[:limit]
    return Page[DeadLetterOut](
        items=[DeadLetterOut.of(d) for d in found],
        next_cursor=encode_cursor("deadletters", found[-1].id) if more else None,
    )


@router.post(
    "/v1/deadletters/{dead_id}/retry",
    response_model=Changed,
    responses=documented(403, 404, 422),
    summary="Retry a dead letter",
)
async def retry_dead_letter(request: Request, ctx: Context, _: Writer, dead_id: DeadId) -> Changed:
    """Ask the running sink to send this message once more."""
    if not await ctx.store.mark_dead_letters(state=DeadLetterState.RETRY, ids=[dead_id]):
        raise not_found(f"dead letter {dead_id}")
    await audit(request, ctx.store, "deadletter.retry", str(dead_id))
    return Changed(id=dead_id, state=DeadLetterState.RETRY.value)


@router.post(
    "/v1/deadletters/{dead_id}/drop",
    response_model=Dropped,
    responses=documented(403, 404, 422),
    summary="Drop a dead letter",
)
async def drop_dead_letter(request: Request, ctx: Context, _: Writer, dead_id: DeadId) -> Dropped:
    """Forget a dead letter (the message stays in the journal until retention)."""
    if not await ctx.store.drop_dead_letters(ids=[dead_id]):
        raise not_found(f"dead letter {dead_id}")
    await audit(request, ctx.store, "deadletter.drop", str(dead_id))
    return Dropped(id=dead_id, dropped=True)
