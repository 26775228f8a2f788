"""/v1/health, /v1/version and /v1/messagetypes: what runs, and what it reads CSV lines by."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from fieldbridge import __version__
from fieldbridge.store.migrate import head_revision
from fieldbridge.web.api.deps import Caller, Context
from fieldbridge.web.api.schemas import HealthOut, MessageTypeOut, VersionOut

router = APIRouter(tags=["service"])


@router.get(
    "/v1/health",
    response_model=HealthOut,
    responses={503: {"model": HealthOut, "description": "a part failed: which, and why"}},
    summary="Health",
)
async def health(ctx: Context, _: Caller) -> JSONResponse:
    """What /healthz says: the store, the last commit, each sink; 503 when a part failed."""
    ok, detail = await ctx.health()
    return JSONResponse(
        HealthOut.model_validate(detail).model_dump(), status_code=200 if ok else 503
    )


@router.get("/v1/version", response_model=VersionOut, summary="Version")
async def version(ctx: Context, _: Caller) -> VersionOut:
    """fieldbridge's version, the schema revision it ships and the one the store is at."""
    return VersionOut(
        version=__version__,
        schema_head=head_revision(),
        schema_revision=await ctx.store.schema_revision(),
    )


@router.get("/v1/messagetypes", response_model=list[MessageTypeOut], summary="Message types")
async def message_types(ctx: Context, _: Caller) -> list[MessageTypeOut]:
    """The named, ordered fields CSV lines are read by (`fieldbridge messagetypes list`)."""
    return [MessageTypeOut.of(m) for m in await ctx.store.list_message_types()]
