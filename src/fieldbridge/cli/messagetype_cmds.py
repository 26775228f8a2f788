"""messagetypes commands: the names and types that CSV values of a node are read by."""

from __future__ import annotations

import re
from typing import Annotated

import typer

from fieldbridge.cli.context import with_store
from fieldbridge.cli.output import fail, print_json, print_table
from fieldbridge.cli.records import message_type_json
from fieldbridge.model import FieldType, MessageField, MessageType
from fieldbridge.store import Store

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
NAME = re.compile(r"[A-Za-z0-9_.()%-]{1,64}", re.ASCII)
MAX_FIELDS = 256

messagetypes = typer.Typer(
    help=(
        "Message types: the names of a node's CSV values, in order (trapnet codec). Attach one "
        "with `fieldbridge devices set ID --message-type NAME`."
    ),
    no_args_is_help=True,
)


def parse_field(text: str, position: int) -> MessageField | None:
    """`name:T[:tag]` (T is S text, I integer, F float) or `-` to skip a position."""
    if text == "-":
        return None
    parts = text.split(":")
    where = f"field {position + 1} ({text!r})"
    if len(parts) not in (2, 3) or not NAME.fullmatch(parts[0]):
        fail(
            f"{where}: write NAME:TYPE or NAME:TYPE:tag (NAME of A-Z a-z 0-9 _ . ( ) % -, "
            "TYPE S, I or F), or - to skip a value",
            code=2,
        )
    try:
        ftype = FieldType(parts[1].upper())
    except ValueError:
        fail(f"{where}: the type must be S (text), I (integer) or F (float)", code=2)
    if len(parts) == 3 and parts[2].lower() != "tag":
        fail(f"{where}: the third part can only be `tag`", code=2)
    return MessageField(parts[0], ftype, is_tag=len(parts) == 3)


@messagetypes.command("add")
def messagetypes_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The message type's name, e.g. air.")],
    fields: Annotated[
        list[str],
        typer.Argument(
            metavar="FIELD...",
            help=(
                "The values in their order on the line: NAME:TYPE[:tag], TYPE S (text, kept "
                "as an attribute), I or F (a reading); tag marks a value carried as a tag on "
                "the readings; - skips a value."
            ),
        ),
    ],
    description: Annotated[str | None, typer.Option(help="What the type is for.")] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace a type of that name (applies at once).")
    ] = False,
    json_out: JsonFlag = False,
) -> None:
    """Add a message type: the names of a CSV line's values after the node id."""
    if not NAME.fullmatch(name):
        fail(f"NAME {name!r}: 1 to 64 of A-Z a-z 0-9 _ . ( ) % -", code=2)
    if len(fields) > MAX_FIELDS:
        fail(f"at most {MAX_FIELDS} fields", code=2)
    specs = tuple(parse_field(text, i) for i, text in enumerate(fields))
    if all(spec is None for spec in specs):
        fail("name at least one field", code=2)
    message_type = MessageType(name, specs, description)

    async def save(store: Store) -> bool:
        return await store.save_message_type(message_type, replace=replace)

    if not with_store(ctx, save):
        fail(f"message type {name!r} exists; add --replace to change it")
    _show(message_type, json_out)


@messagetypes.command("list")
def messagetypes_list(ctx: typer.Context, json_out: JsonFlag = False) -> None:
    """List message types with their fields."""
    found = with_store(ctx, lambda s: s.list_message_types())
    if json_out:
        print_json([message_type_json(m) for m in found])
        return
    print_table(
        "message types",
        ["name", "fields", "description"],
        [(m.name, _fields_text(m), m.description) for m in found],
    )


@messagetypes.command("show")
def messagetypes_show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The message type's name.")],
    json_out: JsonFlag = False,
) -> None:
    """Show one message type, its fields and the devices that use it."""

    async def get(store: Store) -> tuple[MessageType | None, list[str]]:
        return await store.get_message_type(name), await store.devices_using(name)

    found, devices = with_store(ctx, get)
    if found is None:
        fail(f"no message type {name!r}; `fieldbridge messagetypes list` shows the known ones")
    if json_out:
        print_json({**message_type_json(found), "devices": devices})
        return
    _show(found, False)
    print_table(f"devices using {name}", ["id"], [(d,) for d in devices])


def _show(message_type: MessageType, json_out: bool) -> None:
    if json_out:
        print_json(message_type_json(message_type))
        return
    print_table(
        f"message type {message_type.name}",
        ["position", "name", "type", "tag"],
        [
            (i + 1, "-", "", "")
            if spec is None
            else (i + 1, spec.name, spec.type.value, "tag" if spec.is_tag else "")
            for i, spec in enumerate(message_type.fields)
        ],
    )


def _fields_text(m: MessageType) -> str:
    return " ".join(
        "-" if spec is None else f"{spec.name}:{spec.type.value}{':tag' if spec.is_tag else ''}"
        for spec in m.fields
    )
