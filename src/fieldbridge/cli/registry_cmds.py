"""devices, readings and quarantine commands."""

from __future__ import annotations

from typing import Annotated

import typer

from fieldbridge.cli.context import with_store
from fieldbridge.cli.output import fail, print_json, print_table
from fieldbridge.cli.records import device_json, quarantine_json, stored_reading_json
from fieldbridge.errors import DecodeError
from fieldbridge.model import Device, check_device_id
from fieldbridge.store import Store
from fieldbridge.timefmt import iso, parse_iso

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

devices = typer.Typer(
    help="The device registry: every device fieldbridge has seen.", no_args_is_help=True
)
readings = typer.Typer(help="Stored readings.", no_args_is_help=True)
quarantine = typer.Typer(
    help="Payloads that did not decode, kept with the reason.", no_args_is_help=True
)


@devices.command("list")
def devices_list(
    ctx: typer.Context,
    kind: Annotated[str | None, typer.Option(help="Only devices of this kind.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 1000,
    json_out: JsonFlag = False,
) -> None:
    """List devices, by id."""
    found = with_store(ctx, lambda s: s.list_devices(kind=kind, limit=limit))
    if json_out:
        print_json([device_json(d) for d in found])
        return
    print_table(
        "devices",
        ["id", "kind", "source", "last seen", "messages", "flags"],
        [
            (
                d.id,
                d.kind,
                d.source,
                iso(d.last_seen),
                d.message_count,
                ",".join(k for k, v in d.flags.items() if v),
            )
            for d in found
        ],
    )


@devices.command("show")
def devices_show(
    ctx: typer.Context,
    device_id: Annotated[str, typer.Argument(metavar="ID", help="The device id.")],
    json_out: JsonFlag = False,
) -> None:
    """Show one device with its attributes and flags."""
    device = with_store(ctx, lambda s: s.get_device(device_id))
    if device is None:
        fail(f"no device {device_id!r}; `fieldbridge devices list` shows the known ones")
    data = device_json(device)
    if json_out:
        print_json(data)
        return
    print_table(f"device {device_id}", ["field", "value"], list(data.items()))


def _parse_pairs(values: list[str], option: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            fail(f"{option} {value!r}: write KEY=VALUE", code=2)
        pairs[key] = rest
    return pairs


def _parse_flags(values: list[str]) -> dict[str, bool]:
    flags: dict[str, bool] = {}
    for key, value in _parse_pairs(values, "--flag").items():
        if value.lower() not in ("on", "off"):
            fail(f"--flag {key}={value}: the value must be on or off", code=2)
        flags[key] = value.lower() == "on"
    return flags


@devices.command("add")
def devices_add(
    ctx: typer.Context,
    device_id: Annotated[
        str, typer.Argument(metavar="ID", help="The device id, e.g. a kit token.")
    ],
    kind: Annotated[str | None, typer.Option(help="The device kind, e.g. smartcitizen.")] = None,
    name: Annotated[str | None, typer.Option(help="A human name for the device.")] = None,
    attr: Annotated[list[str] | None, typer.Option("--attr", help="KEY=VALUE.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Register a device before it sends anything (needed by codec_options.registered_only)."""
    if not device_id.strip():
        fail("ID must be non-empty text", code=2)
    try:
        check_device_id(device_id, "ID")  # the rule every codec's ids follow
    except DecodeError as exc:
        fail(exc.reason, code=2)
    attrs = _parse_pairs(attr or [], "--attr")

    async def add(store: Store) -> Device | None:
        return await store.add_device(device_id, kind=kind, name=name, attributes=attrs)

    device = with_store(ctx, add)
    if device is None:
        fail(
            f"device {device_id!r} is already registered; change it with `fieldbridge devices set`"
        )
    if json_out:
        print_json(device_json(device))
    else:
        print_table(f"device {device_id}", ["field", "value"], list(device_json(device).items()))


@devices.command("set")
def devices_set(
    ctx: typer.Context,
    device_id: Annotated[str, typer.Argument(metavar="ID", help="The device id.")],
    flag: Annotated[
        list[str] | None, typer.Option("--flag", help="KEY=on|off, e.g. upload_trapnz=on.")
    ] = None,
    attr: Annotated[list[str] | None, typer.Option("--attr", help="KEY=VALUE.")] = None,
    name: Annotated[str | None, typer.Option(help="A human name for the device.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Set flags (routing switches such as upload_trapnz), attributes or the name of a device."""
    flags = _parse_flags(flag or [])
    attrs = _parse_pairs(attr or [], "--attr")
    if not flags and not attrs and name is None:
        fail("nothing to set; give --flag KEY=on|off, --attr KEY=VALUE or --name", code=2)

    async def update(store: Store) -> Device | None:
        return await store.update_device(device_id, flags=flags, attributes=attrs, name=name)

    device = with_store(ctx, update)
    if device is None:
        fail(f"no device {device_id!r}; devices appear once they sent a message")
    if json_out:
        print_json(device_json(device))
    else:
        print_table(f"device {device_id}", ["field", "value"], list(device_json(device).items()))


@readings.command("list")
def readings_list(
    ctx: typer.Context,
    device: Annotated[str, typer.Option(help="The device id.")],
    since: Annotated[
        str | None, typer.Option(help="ISO 8601 time; readings measured from then on.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 100,
    json_out: JsonFlag = False,
) -> None:
    """List readings of one device in time order (the latest ones without --since)."""
    start = None
    if since is not None:
        try:
            start = parse_iso(since)
        except ValueError:
            fail(f"--since {since!r} is not ISO 8601 (e.g. 2026-11-23T08:00:00Z)", code=2)
    found = with_store(ctx, lambda s: s.list_readings(device, since=start, limit=limit))
    rows = [stored_reading_json(r) for r in found]
    if json_out:
        print_json(rows)
        return
    print_table(
        f"readings of {device}",
        ["measured_at", "quantity", "channel", "value", "unit"],
        [(r["measured_at"], r["quantity"], r["channel"], r["value"], r["unit"]) for r in rows],
    )


@quarantine.command("list")
def quarantine_list(
    ctx: typer.Context,
    source: Annotated[str | None, typer.Option(help="Only payloads from this source.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 100,
    json_out: JsonFlag = False,
) -> None:
    """List quarantined payloads, newest first, with the reason each was refused."""
    found = with_store(ctx, lambda s: s.list_quarantine(source=source, limit=limit))
    rows = [quarantine_json(q) for q in found]
    if json_out:
        print_json(rows)
        return
    print_table(
        "quarantined payloads",
        ["id", "received_at", "source", "reason", "payload"],
        [
            (
                r["id"],
                r["received_at"],
                r["source"],
                r["reason"],
                (r["payload_text"] or "<binary>")[:60],
            )
            for r in rows
        ],
    )
