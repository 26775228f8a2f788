"""dunedb commands: the DUNE DB's components and actions from the command line (seed 004)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import orjson
import typer

from fieldbridge.cli.context import settings_of
from fieldbridge.cli.output import console, fail, print_json, print_table
from fieldbridge.clients.dunedb import Action, AsyncDuneDB, Component
from fieldbridge.clients.short_uuid import encode
from fieldbridge.errors import ApiError, AuthError, ConfigError

T = TypeVar("T")
DEFAULT_ENV = "development"

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
EnvOption = Annotated[
    str | None,
    typer.Option(
        "--env",
        "-e",
        help="The settings' environment: \\[dunedb.environments.NAME] (default development).",
        show_default=False,
    ),
]
DataOption = Annotated[
    str | None,
    typer.Option("--data", help='The data fields as one JSON object, e.g. \'{"name": "x"}\'.'),
]
FieldOption = Annotated[
    list[str] | None,
    typer.Option(
        "--field",
        "-f",
        help=(
            "NAME=VALUE, repeatable; VALUE is read as JSON when it is JSON (12.04, true, null, "
            '"text"), else as text.'
        ),
    ),
]

dunedb = typer.Typer(
    help=(
        "The DUNE DB: convert short UUIDs, get, create and edit components, perform, get and "
        "edit actions (\\[dunedb.environments.NAME] in the settings)."
    ),
    no_args_is_help=True,
)
component = typer.Typer(help="Components: get, create, edit.", no_args_is_help=True)
action = typer.Typer(help="Actions on components: perform, get, edit.", no_args_is_help=True)
dunedb.add_typer(component, name="component")
dunedb.add_typer(action, name="action")


@dunedb.callback()
def dunedb_root(ctx: typer.Context, env: EnvOption = None) -> None:
    ctx.ensure_object(dict)
    ctx.obj["dunedb_env"] = env


def _call(ctx: typer.Context, env: str | None, work: Callable[[AsyncDuneDB], Awaitable[T]]) -> T:
    """Run `work` with a client of the chosen environment; exit 1 with the server's message
    on an API or token error, 2 on bad settings or arguments."""
    name = env or (ctx.obj or {}).get("dunedb_env") or DEFAULT_ENV
    try:
        environment = settings_of(ctx).dune_environment(name)
    except ConfigError as exc:
        fail(str(exc), code=2)

    async def go() -> T:
        async with AsyncDuneDB(environment, name=f"DUNE DB {name}") as db:
            return await work(db)

    try:
        return asyncio.run(go())
    except ValueError as exc:
        fail(str(exc), code=2)
    except (ApiError, AuthError) as exc:
        fail(str(exc))


def _data(data: str | None, fields: list[str] | None, *, required: bool = True) -> dict[str, Any]:
    """The data fields of --data and --field (a --field wins over the same key in --data)."""
    out: dict[str, Any] = {}
    if data is not None:
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            fail(f"--data is not JSON: {exc}", code=2)
        if not isinstance(parsed, dict):
            fail("--data must be a JSON object of field names and values", code=2)
        out.update(parsed)
    for item in fields or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            fail(f"--field {item!r}: write NAME=VALUE", code=2)
        try:
            value: Any = orjson.loads(text)
        except orjson.JSONDecodeError:
            value = text
        out[key.strip()] = value
    if required and not out:
        fail("give the data: --data JSON or --field NAME=VALUE (repeatable)", code=2)
    return out


def _show_record(title: str, rows: list[tuple[str, Any]], data: dict[str, Any]) -> None:
    print_table(title, ["field", "value"], rows)
    print_table(
        "data",
        ["name", "value"],
        [(k, orjson.dumps(v).decode()) for k, v in data.items()],
    )


@dunedb.command("convert-uuid")
def convert_uuid(
    ctx: typer.Context,
    short: Annotated[str, typer.Argument(help="A short UUID (20 to 22 characters).")],
    env: EnvOption = None,
    json_out: JsonFlag = False,
) -> None:
    """Print the full UUID of the component a short UUID names."""
    full = _call(ctx, env, lambda db: db.convert_short_uuid(short))
    if json_out:
        print_json({"short_uuid": short, "component_uuid": str(full)})
    else:
        console.print(str(full), highlight=False)


@component.command("get")
def component_get(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(metavar="UUID", help="The component's UUID or short UUID.")],
    env: EnvOption = None,
    json_out: JsonFlag = False,
) -> None:
    """Show the newest version of a component (--json: the whole record)."""
    found: Component = _call(ctx, env, lambda db: db.get_component(ref))
    if json_out:
        print_json(dict(found.record))
        return
    _show_record(
        "component",
        [
            ("uuid", found.uuid),
            ("short uuid", found.short_uuid),
            ("form", found.form_id),
            ("form name", found.form_name),
            ("version", found.version),
        ],
        dict(found.data),
    )


@component.command("create")
def component_create(
    ctx: typer.Context,
    form: Annotated[str, typer.Option("--form", help="The component's type form ID.")],
    data: DataOption = None,
    field: FieldOption = None,
    env: EnvOption = None,
    json_out: JsonFlag = False,
) -> None:
    """Create a component; print its UUID."""
    values = _data(data, field)
    created = _call(ctx, env, lambda db: db.create_component(form, values))
    _print_component(created, json_out)


@component.command("edit")
def component_edit(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(metavar="UUID", help="The component's UUID or short UUID.")],
    data: DataOption = None,
    field: FieldOption = None,
    env: EnvOption = None,
    json_out: JsonFlag = False,
) -> None:
    """Set data fields of a component (the DB keeps the old version); print its UUID."""
    values = _data(data, field)
    edited = _call(ctx, env, lambda db: db.edit_component(ref, values))
    _print_component(edited, json_out)


def _print_component(value: uuid.UUID, json_out: bool) -> None:
    if json_out:
        print_json({"component_uuid": str(value), "short_uuid": encode(value)})
    else:
        console.print(str(value), highlight=False)


@action.command("perform")
def action_perform(
    ctx: typer.Context,
    form: Annotated[str, typer.Option("--form", help="The action's type form ID.")],
    on: Annotated[str, typer.Option("--component", help="The component's UUID or short UUID.")],
    data: DataOption = None,
    field: FieldOption = None,
    env: EnvOption = None,
    json_out: JsonFlag = False,
) -> None:
    """Perform an action on a component; print the new action's ID."""
    values = _data(data, field, required=False)
    done = _call(ctx, env, lambda db: db.perform_action(form, on, values))
    _print_action(done, json_out)


@action.command("get")
def action_get(
    ctx: typer.Context,
    action_id: Annotated[str, typer.Argument(metavar="ID", help="The action's ID (24 hex).")],
    env: EnvOption = None,
    json_out: JsonFlag = False,
) -> None:
    """Show the newest version of an action (--json: the whole record)."""
    found: Action = _call(ctx, env, lambda db: db.get_action(action_id))
    if json_out:
        print_json(dict(found.record))
        return
    _show_record(
        "action",
        [
            ("id", found.id),
            ("form", found.form_id),
            ("form name", found.form_name),
            ("component", found.component_uuid),
            ("version", found.version),
        ],
        dict(found.data),
    )


@action.command("edit")
def action_edit(
    ctx: typer.Context,
    action_id: Annotated[str, typer.Argument(metavar="ID", help="The action's ID (24 hex).")],
    data: DataOption = None,
    field: FieldOption = None,
    env: EnvOption = None,
    json_out: JsonFlag = False,
) -> None:
    """Set data fields of an action (the DB keeps the old version); print its ID."""
    values = _data(data, field)
    edited = _call(ctx, env, lambda db: db.edit_action(action_id, values))
    _print_action(edited, json_out)


def _print_action(action_id: str, json_out: bool) -> None:
    if json_out:
        print_json({"action_id": action_id})
    else:
        console.print(action_id, highlight=False)
