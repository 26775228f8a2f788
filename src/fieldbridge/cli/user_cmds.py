"""users and tokens commands: who may log in to the console, and API tokens for scripts."""

from __future__ import annotations

import getpass
import re
import sys
from typing import Annotated, Any

import typer

from fieldbridge.cli.context import with_store
from fieldbridge.cli.output import console, fail, print_json, print_table
from fieldbridge.store import Store
from fieldbridge.timefmt import iso
from fieldbridge.web.security.audit import record
from fieldbridge.web.security.passwords import check_strength, hash_password_async
from fieldbridge.web.security.principal import Role, Scope
from fieldbridge.web.security.tokens import mint_token

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}", re.ASCII)

users = typer.Typer(
    help="Console users (docs/security.md): roles admin (may change things) and viewer.",
    no_args_is_help=True,
)
tokens = typer.Typer(
    help="API tokens for scripts (docs/api.md): `Authorization: Bearer <token>`, scope read "
    "or write, shown once, kept only as a hash.",
    no_args_is_help=True,
)


def actor() -> str:
    """Who the audit log says made a change from the command line."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _check_name(name: str, what: str) -> None:
    if not NAME.fullmatch(name):
        fail(f"{what} {name!r}: use 1 to 64 of A-Z a-z 0-9 _ . @ -", code=2)


def _read_password(name: str) -> str:
    """From a prompt, twice; from standard input (its first line) when it is not a terminal."""
    if sys.stdin.isatty():
        first = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != first:
            fail("the two passwords differ; nothing changed", code=2)
        password = first
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    weak = check_strength(password)
    if weak is not None:
        fail(f"{weak}; nothing changed", code=2)
    return password


@users.command("add")
def users_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The user name to log in with.")],
    role: Annotated[Role, typer.Option(help="admin may change things; viewer only looks.")],
    json_out: JsonFlag = False,
) -> None:
    """Add a user; the password comes from a prompt, or from standard input when piped."""
    _check_name(name, "user name")
    password = _read_password(name)

    async def go(store: Store) -> bool:
        added = await store.add_user(name, role, await hash_password_async(password))
        if added:
            await record(store, actor(), "user.create", name, {"role": str(role)})
        return added

    if not with_store(ctx, go):
        fail(f"user {name} exists; change the password with: fieldbridge users passwd {name}")
    if json_out:
        print_json({"name": name, "role": str(role)})
    else:
        console.print(f"added {role} {name}")


@users.command("passwd")
def users_passwd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The user whose password changes.")],
    json_out: JsonFlag = False,
) -> None:
    """Set a user's password (prompt, or standard input); logs out their sessions."""
    password = _read_password(name)

    async def go(store: Store) -> bool:
        changed = await store.set_password(name, await hash_password_async(password))
        if changed:
            await record(store, actor(), "user.passwd", name)
        return changed

    if not with_store(ctx, go):
        fail(f"no user {name} (see: fieldbridge users list)")
    if json_out:
        print_json({"name": name, "changed": True})
    else:
        console.print(f"password of {name} changed; their sessions are logged out")


@users.command("remove")
def users_remove(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The user to remove.")],
    json_out: JsonFlag = False,
) -> None:
    """Remove a user and log out their sessions."""

    async def go(store: Store) -> bool:
        removed = await store.delete_user(name)
        if removed:
            await record(store, actor(), "user.delete", name)
        return removed

    if not with_store(ctx, go):
        fail(f"no user {name} (see: fieldbridge users list)")
    if json_out:
        print_json({"name": name, "removed": True})
    else:
        console.print(f"removed {name}")


@users.command("list")
def users_list(ctx: typer.Context, json_out: JsonFlag = False) -> None:
    """List users with their role and last login."""
    found = with_store(ctx, lambda store: store.list_users())
    rows: list[dict[str, Any]] = [
        {
            "name": u.name,
            "role": u.role,
            "created_at": iso(u.created_at),
            "last_login": None if u.last_login is None else iso(u.last_login),
        }
        for u in found
    ]
    if json_out:
        print_json(rows)
    else:
        print_table(
            "users",
            ["name", "role", "created", "last login"],
            [(r["name"], r["role"], r["created_at"], r["last_login"] or "never") for r in rows],
        )


@tokens.command("create")
def tokens_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", help="A name for the script that uses it.")],
    scope: Annotated[Scope, typer.Option(help="read: look only; write: change things too.")],
    json_out: JsonFlag = False,
) -> None:
    """Create an API token and print it once (only its hash is kept)."""
    _check_name(name, "token name")
    plain, hashed = mint_token()

    async def go(store: Store) -> bool:
        made = await store.create_api_token(name, scope, hashed, actor())
        if made:
            await record(store, actor(), "token.create", name, {"scope": str(scope)})
        return made

    if not with_store(ctx, go):
        fail(f"a token named {name} exists (names are never reused); choose another name")
    if json_out:
        print_json({"name": name, "scope": str(scope), "token": plain})
        return
    console.print(f"token {name} ({scope}); shown only now, keep it safe:", highlight=False)
    sys.stdout.write(plain + "\n")


@tokens.command("list")
def tokens_list(ctx: typer.Context, json_out: JsonFlag = False) -> None:
    """List API tokens (never the tokens themselves)."""
    found = with_store(ctx, lambda store: store.list_api_tokens())
    rows: list[dict[str, Any]] = [
        {
            "name": t.name,
            "scope": t.scope,
            "created_at": iso(t.created_at),
            "created_by": t.created_by,
            "last_used": None if t.last_used is None else iso(t.last_used),
            "revoked_at": None if t.revoked_at is None else iso(t.revoked_at),
        }
        for t in found
    ]
    if json_out:
        print_json(rows)
    else:
        print_table(
            "tokens",
            ["name", "scope", "created", "last used", "revoked"],
            [
                (
                    r["name"],
                    r["scope"],
                    r["created_at"],
                    r["last_used"] or "never",
                    r["revoked_at"] or "",
                )
                for r in rows
            ],
        )


@tokens.command("revoke")
def tokens_revoke(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The token's name (see: fieldbridge tokens list).")],
    json_out: JsonFlag = False,
) -> None:
    """Revoke an API token: requests sending it get 401 from now on."""

    async def go(store: Store) -> bool:
        revoked = await store.revoke_api_token(name)
        if revoked:
            await record(store, actor(), "token.revoke", name)
        return revoked

    if not with_store(ctx, go):
        fail(f"no unrevoked token named {name} (see: fieldbridge tokens list)")
    if json_out:
        print_json({"name": name, "revoked": True})
    else:
        console.print(f"revoked {name}")
