"""/v1/users, /v1/tokens and /v1/audit: for admins only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request

from fieldbridge.timefmt import iso
from fieldbridge.web.api.deps import Admin, Context
from fieldbridge.web.api.errors import ApiError, documented, not_found
from fieldbridge.web.api.paging import decode_cursor, encode_cursor, int_position
from fieldbridge.web.api.schemas import (
    NAME,
    PRINTABLE,
    AuditOut,
    Page,
    Revoked,
    TokenCreated,
    TokenIn,
    TokenOut,
    UserIn,
    UserOut,
    iso_or_none,
)
from fieldbridge.web.security.audit import audit
from fieldbridge.web.security.passwords import check_strength, hash_password_async
from fieldbridge.web.security.tokens import mint_token

router = APIRouter(tags=["admin"], responses=documented(403))


@router.get("/v1/users", response_model=list[UserOut], summary="List users")
async def list_users(ctx: Context, _: Admin) -> list[UserOut]:
    """Console users with their role and last login."""
    return [
        UserOut(
            name=u.name,
            role="admin" if u.role == "admin" else "viewer",
            created_at=iso(u.created_at),
            last_login=iso_or_none(u.last_login),
        )
        for u in await ctx.store.list_users()
    ]


@router.post(
    "/v1/users",
    response_model=UserOut,
    status_code=201,
    responses=documented(409, 413, 422),
    summary="Add a user",
)
async def add_user(request: Request, ctx: Context, _: Admin, body: UserIn) -> UserOut:
    """Add a console user (as `fieldbridge users add`)."""
    weak = check_strength(body.password)
    if weak is not None:
        raise ApiError(422, "weak_password", weak)
    if not await ctx.store.add_user(body.name, body.role, await hash_password_async(body.password)):
        raise ApiError(409, "conflict", f"user {body.name} exists")
    await audit(request, ctx.store, "user.create", body.name, {"role": body.role})
    user = await ctx.store.get_user(body.name)
    if user is None:
        raise not_found(f"user {body.name}")
    return UserOut(
        name=user.name,
        role=body.role,
        created_at=iso(user.created_at),
        last_login=iso_or_none(user.last_login),
    )


@router.get("/v1/tokens", response_model=list[TokenOut], summary="List API tokens")
async def list_tokens(ctx: Context, _: Admin) -> list[TokenOut]:
    """API tokens (never the tokens themselves)."""
    return [
        TokenOut(
            name=t.name,
            scope="write" if t.scope == "write" else "read",
            created_at=iso(t.created_at),
            created_by=t.created_by,
            last_used=iso_or_none(t.last_used),
            revoked_at=iso_or_none(t.revoked_at),
        )
        for t in await ctx.store.list_api_tokens()
    ]


@router.post(
    "/v1/tokens",
    response_model=TokenCreated,
    status_code=201,
    responses=documented(409, 413, 422),
    summary="Create an API token",
)
async def create_token(
    request: Request, ctx: Context, principal: Admin, body: TokenIn
) -> TokenCreated:
    """Create a token and answer it once; only its hash is kept."""
    plain, hashed = mint_token()
    if not await ctx.store.create_api_token(body.name, body.scope, hashed, principal.actor):
        raise ApiError(
            409, "conflict", f"a token named {body.name} exists (names are never reused)"
        )
    await audit(request, ctx.store, "token.create", body.name, {"scope": body.scope})
    return TokenCreated(name=body.name, scope=body.scope, token=plain)


@router.post(
    "/v1/tokens/{name}/revoke",
    response_model=Revoked,
    responses=documented(404, 422),
    summary="Revoke an API token",
)
async def revoke_token(
    request: Request,
    ctx: Context,
    _: Admin,
    name: Annotated[str, Path(pattern=NAME)],
) -> Revoked:
    """Requests sending it get 401 from now on."""
    if not await ctx.store.revoke_api_token(name):
        raise not_found(f"unrevoked token named {name}")
    await audit(request, ctx.store, "token.revoke", name)
    return Revoked(name=name, revoked=True)


@router.get(
    "/v1/audit",
    response_model=Page[AuditOut],
    responses=documented(400, 422),
    summary="Read the audit log",
)
async def list_audit(
    ctx: Context,
    _: Admin,
    actor: Annotated[str | None, Query(max_length=256, pattern=PRINTABLE)] = None,
    action: Annotated[str | None, Query(max_length=256, pattern=PRINTABLE)] = None,
    cursor: Annotated[str | None, Query(max_length=2048)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> Page[AuditOut]:
    """Every change, newest first: who, what, on what, when."""
    before = decode_cursor(cursor, "audit")
    found = await ctx.store.list_audit(
        limit=limit + 1,  # one more: is there a next page?
        before=None if before is None else int_position(before),
        actor=actor,
        action=action,
    )
    more = len(found) > limit
    found = found[:limit]
    return Page[AuditOut](
        items=[
            AuditOut(
                id=e.id,
                at=iso(e.at),
                actor=e.actor,
                action=e.action,
                target=e.target,
                details=dict(e.details),
            )
            for e in found
        ],
        next_cursor=encode_cursor("audit", found[-1].id) if more else None,
    )
